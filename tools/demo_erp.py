"""The demo's sales/ERP database for the `sql_query` tool: database warden_demo_erp in the
embedded PostgreSQL (customers, products, orders, order lines), read through the role
warden_erp_reader.

That role may SELECT the demo_erp tables and nothing else, and every transaction it opens is
read-only by default. A database of its own, not a schema in Warden's: what the model can
reach (the catalog, advisory locks, which are per database) then holds nothing of Warden's.
`demo_erp_install` is idempotent and runs in embedded mode only; a production deployment points
WARDEN_SQL_DATABASES at its own read-only role instead.
"""

from __future__ import annotations

from django.db import connection

DATABASE = "warden_demo_erp"
READER = "warden_erp_reader"

SCHEMA = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'warden_erp_reader') THEN
        CREATE ROLE warden_erp_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END $$;
ALTER ROLE warden_erp_reader SET default_transaction_read_only = on;
ALTER ROLE warden_erp_reader SET statement_timeout = '10s';
CREATE SCHEMA IF NOT EXISTS demo_erp;
CREATE TABLE IF NOT EXISTS demo_erp.customers (
    id integer PRIMARY KEY, name text NOT NULL, region text NOT NULL, segment text NOT NULL
);
CREATE TABLE IF NOT EXISTS demo_erp.products (
    id integer PRIMARY KEY, sku text NOT NULL UNIQUE, name text NOT NULL,
    unit_price numeric(10, 2) NOT NULL
);
CREATE TABLE IF NOT EXISTS demo_erp.orders (
    id integer PRIMARY KEY, customer_id integer NOT NULL REFERENCES demo_erp.customers,
    ordered_on date NOT NULL, status text NOT NULL
);
CREATE TABLE IF NOT EXISTS demo_erp.order_lines (
    order_id integer NOT NULL REFERENCES demo_erp.orders,
    product_id integer NOT NULL REFERENCES demo_erp.products,
    quantity integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
REVOKE ALL ON SCHEMA demo_erp FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA demo_erp TO warden_erp_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA demo_erp TO warden_erp_reader;
"""

CUSTOMERS = [
    (1, "Acme Logistics", "EMEA", "enterprise"),
    (2, "Borealis Foods", "EMEA", "mid-market"),
    (3, "Cobalt Health", "AMER", "enterprise"),
    (4, "Delta Outfitters", "AMER", "small business"),
    (5, "Eastwind Textiles", "APAC", "mid-market"),
    (6, "Fjord Energy", "EMEA", "enterprise"),
]
PRODUCTS = [
    (1, "LAP-14", "Laptop 14-inch", "1249.00"),
    (2, "MON-27", "Monitor 27-inch", "329.00"),
    (3, "DOC-USB", "USB-C dock", "189.00"),
    (4, "HDS-BT", "Bluetooth headset", "119.00"),
    (5, "SUP-3Y", "Support plan, 3 years", "399.00"),
]
ORDERS = [
    (101, 1, "2026-09-02", "shipped"),
    (102, 3, "2026-09-15", "shipped"),
    (103, 2, "2026-10-01", "shipped"),
    (104, 1, "2026-10-20", "invoiced"),
    (105, 6, "2026-11-03", "open"),
    (106, 5, "2026-11-10", "open"),
    (107, 4, "2026-11-12", "cancelled"),
]
ORDER_LINES = [
    (101, 1, 40),
    (101, 3, 40),
    (102, 1, 120),
    (102, 5, 120),
    (103, 2, 15),
    (104, 4, 60),
    (104, 2, 30),
    (105, 1, 25),
    (105, 3, 25),
    (106, 4, 10),
    (107, 2, 2),
]


def demo_erp_install() -> None:
    """Create the database, the reader role, the schema and its rows (once)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    own = connection.settings_dict  # Warden's role in the embedded server may create roles
    server = make_conninfo(
        host=own["HOST"] or None,
        port=own["PORT"] or None,
        user=own["USER"] or None,
        password=own["PASSWORD"] or None,
    )
    with psycopg.connect(f"{server} dbname=postgres", autocommit=True) as admin:
        exists = admin.execute("SELECT FROM pg_database WHERE datname = %s", [DATABASE])
        if exists.fetchone() is None:
            admin.execute(f"CREATE DATABASE {DATABASE}")
    with psycopg.connect(f"{server} dbname={DATABASE}") as erp, erp.transaction():
        erp.execute(SCHEMA)
        seeded = erp.execute("SELECT EXISTS (SELECT FROM demo_erp.customers)").fetchone()
        if seeded and seeded[0]:
            return
        with erp.cursor() as cursor:
            for table, rows in (
                ("customers", CUSTOMERS),
                ("products", PRODUCTS),
                ("orders", ORDERS),
                ("order_lines", ORDER_LINES),
            ):
                marks = ", ".join(["%s"] * len(rows[0]))
                insert = f"INSERT INTO demo_erp.{table} VALUES ({marks})"  # noqa: S608 - constants
                cursor.executemany(insert, rows)
