-- Orders and revenue per UTC day and source. Incremental: each run rebuilds the days from
-- `lookback_days` before the latest day already built, so late updates correct their day.
{{ config(
    materialized='incremental',
    unique_key=['order_day', 'order_source'],
    incremental_strategy='delete+insert',
    on_schema_change='fail'
) }}

select
    order_day,
    order_source,
    count(*)                                                             as orders,
    count(*) filter (where order_status = 'confirmed')                   as confirmed_orders,
    sum(amount_cents)                                                    as gross_cents,
    sum(refunded_cents)                                                  as refunded_cents,
    coalesce(sum(amount_cents - refunded_cents) filter (where order_status = 'confirmed'), 0) as net_cents
from {{ ref('stg_orders') }}
{% if is_incremental() %}
where order_day >= (select max(order_day) from {{ this }}) - {{ var('lookback_days') | int }}
{% endif %}
group by order_day, order_source
