{% test not_in_future(model, column_name) %}
-- Rows dated after now: a timestamp (or a day) the source cannot have produced yet.
select {{ column_name }} from {{ model }} where {{ column_name }} > now()
{% endtest %}
