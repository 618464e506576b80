-- One row per customer. The exports carry no customer id, so a customer is an email within
-- one source: an email change shows up as one customer ending and another beginning.
select
    customer_key,
    order_source,
    customer_email,
    count(*)                      as orders,
    sum(amount_cents)             as lifetime_cents,
    min(ordered_at)               as first_order_at,
    max(ordered_at)               as last_order_at,
    -- UTC without a zone: dbt's snapshot columns (dbt_valid_from/to) are `timestamp`
    max(changed_at) at time zone 'UTC' as updated_at
from {{ ref('stg_orders') }}
where customer_key is not null
group by customer_key, order_source, customer_email
