{% test non_negative(model, column_name) %}
-- Rows whose value is below zero (NULL passes: not_null says whether it may be missing).
select {{ column_name }} from {{ model }} where {{ column_name }} < 0
{% endtest %}
