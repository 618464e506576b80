-- One row per order, in the names and types the marts use.
select
    source                                   as order_source,
    source_order_id                          as order_id,
    source || ':' || source_order_id         as order_key,
    customer_email,
    case when customer_email is not null then source || ':' || customer_email end as customer_key,
    status                                   as order_status,
    currency::text                           as currency,
    amount_cents::bigint                     as amount_cents,
    coalesce(refunded_cents, 0)::bigint      as refunded_cents,
    ordered_at,
    (ordered_at at time zone 'UTC')::date    as order_day,
    updated_at,
    _loaded_at                               as loaded_at,
    _updated_at                              as changed_at
from {{ source('sales', 'orders') }}
