"""Inventory persistence: products, reservations and the adjustment log.

Stock moves only through conditional statements checked by row count
(`available = available - q WHERE available >= q`), so it never goes below
zero whatever the concurrency, on SQLite or PostgreSQL, with any number of
replicas sharing the database.
"""


import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from inventory_svc import metrics
from inventory_svc.stock import (
    RELEASED,
    RESERVED,
    SEED_CATALOG,
    Product,
    Reservation,
    ReservedLine,
)
from plumbing import db, migrations
from plumbing.errors import ShopError, failed_precondition, invalid_argument, not_found
from plumbing.timestamps import utc_now

metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("product_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("price_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("available", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("available >= 0", name="available_not_negative"),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

reservation_lines = sa.Table(
    "reservation_lines",
    metadata,
    sa.Column("order_id", sa.String(64), sa.ForeignKey("reservations.order_id"), primary_key=True),
    sa.Column("product_id", sa.String(64), primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("unit_price_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
)

stock_adjustments = sa.Table(
    "stock_adjustments",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("product_id", sa.String(64), nullable=False, index=True),
    sa.Column("delta", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

MIGRATIONS = (lambda conn: metadata.create_all(conn),)

# The statements of every read and reservation, built once: building a
# statement and its cache key on each call cost more than running it.
_SELECT_PRODUCT = sa.select(products).where(products.c.product_id == sa.bindparam("w_product_id"))
_TAKE_STOCK = (
    products.update()
    .where(
        products.c.product_id == sa.bindparam("w_product_id"),
        products.c.available >= sa.bindparam("w_quantity"),
    )
    .values(available=products.c.available - sa.bindparam("w_quantity"), updated_at=sa.bindparam("w_now"))
    .returning(products.c.price_cents, products.c.currency)
)
_INSERT_RESERVATION_LINES = reservation_lines.insert()


def _product(row) -> Product:
    return Product(row.product_id, row.name, row.price_cents, row.currency, row.available)


def _seed(conn: Connection) -> None:
    """The seed catalog, only into an empty database."""
    if conn.execute(sa.select(sa.func.count()).select_from(products)).scalar_one():
        return
    now = utc_now()
    conn.execute(
        products.insert(),
        [
            {**p.__dict__, "updated_at": now}
            for p in SEED_CATALOG
        ],
    )


class InventoryStore:
    def __init__(self, engine: Engine, seed: bool = True):
        self.engine = engine
        self.seed = seed

    def migrate(self) -> None:
        """The schema, and the seed catalog into an empty database."""
        migrations.migrate(self.engine, metadata, MIGRATIONS, seed=_seed if self.seed else None)

    # Catalog

    def list_products(self) -> list[Product]:
        with db.read(self.engine) as conn:
            rows = conn.execute(sa.select(products).order_by(products.c.product_id))
            return [_product(r) for r in rows]

    def get_product(self, product_id: str) -> Product:
        with db.read(self.engine) as conn:
            return self._get(conn, product_id)

    def get_products(self, product_ids: list[str]) -> dict[str, Product]:
        with db.read(self.engine) as conn:
            rows = conn.execute(sa.select(products).where(products.c.product_id.in_(product_ids)))
            return {r.product_id: _product(r) for r in rows}

    def upsert_product(self, product_id, name, price_cents, currency, available) -> Product:
        """Create or update; None leaves a field as it is. A new product
        needs name and price_cents."""
        changes = {
            k: v
            for k, v in dict(name=name, price_cents=price_cents, currency=currency, available=available).items()
            if v is not None
        }
        with db.write(self.engine) as conn:
            inserted = False
            if name is not None and price_cents is not None:
                inserted = db.insert_if_absent(
                    conn,
                    products,
                    dict(
                        product_id=product_id,
                        name=name,
                        price_cents=price_cents,
                        currency=currency or "USD",
                        available=available or 0,
                        updated_at=utc_now(),
                    ),
                )
            if not inserted:
                updated = conn.execute(
                    products.update()
                    .where(products.c.product_id == product_id)
                    .values(**changes, updated_at=utc_now())
                ).rowcount
                if not updated:
                    raise invalid_argument(
                        [(f, "is required for a new product") for f in ("name", "price_cents") if f not in changes]
                    )
            return self._get(conn, product_id)

    def adjust_stock(self, product_id: str, delta: int, reason: str) -> Product:
        with db.write(self.engine) as conn:
            row = conn.execute(
                products.update()
                .where(products.c.product_id == product_id, products.c.available + delta >= 0)
                .values(available=products.c.available + delta, updated_at=utc_now())
                .returning(*products.c)
            ).first()
            if row is None:
                raise self._out_of_stock(conn, product_id, f"cannot adjust by {delta}")
            conn.execute(
                stock_adjustments.insert().values(
                    product_id=product_id, delta=delta, reason=reason, created_at=utc_now()
                )
            )
        metrics.stock_adjusted(delta)
        return _product(row)

    # Saga steps

    def reserve(self, order_id: str, quantities: dict[str, int]) -> Reservation:
        """Take stock for every product of an order, or none of it.

        Idempotent: the reservation row is claimed first (INSERT ... ON
        CONFLICT DO NOTHING), so a repeat, or a concurrent duplicate on
        another replica, finds the first one instead of taking stock twice.
        """
        with db.write(self.engine) as conn:
            now = utc_now()
            if not self._claim(conn, order_id, RESERVED, now):
                existing = self._reservation(conn, order_id)
                if existing.status == RELEASED:
                    raise failed_precondition(
                        "RESERVATION_RELEASED",
                        f"order {order_id} has been released; it cannot reserve stock again",
                        order_id=order_id,
                    )
                return existing
            lines = []
            for product_id, quantity in quantities.items():
                row = conn.execute(
                    _TAKE_STOCK, {"w_product_id": product_id, "w_quantity": quantity, "w_now": now}
                ).first()
                if row is None:
                    # Raising rolls back every decrement made above.
                    raise self._out_of_stock(
                        conn, product_id, f"{quantity} requested", requested=quantity, order_id=order_id
                    )
                lines.append(ReservedLine(product_id, quantity, row.price_cents, row.currency))
            conn.execute(
                _INSERT_RESERVATION_LINES,
                [{"order_id": order_id, **line.__dict__} for line in lines],
            )
            return Reservation(order_id, RESERVED, tuple(lines))

    def release(self, order_id: str) -> Reservation:
        """Give an order's stock back, once. Releasing an order that never
        reserved leaves a RELEASED tombstone, so a late Reserve is refused."""
        with db.write(self.engine) as conn:
            now = utc_now()
            if self._claim(conn, order_id, RELEASED, now):
                return Reservation(order_id, RELEASED, ())  # a tombstone
            # Compare-and-set: only the caller that moves RESERVED -> RELEASED
            # puts the stock back.
            moved = conn.execute(
                reservations.update()
                .where(reservations.c.order_id == order_id, reservations.c.status == RESERVED)
                .values(status=RELEASED, updated_at=now)
            ).rowcount
            reservation = self._reservation(conn, order_id)
            if moved:
                for line in reservation.lines:
                    conn.execute(
                        products.update()
                        .where(products.c.product_id == line.product_id)
                        .values(available=products.c.available + line.quantity, updated_at=now)
                    )
            return reservation

    # Helpers

    def _out_of_stock(self, conn: Connection, product_id: str, wanted: str, **details) -> ShopError:
        """OUT_OF_STOCK for what was `wanted` of a product, naming what it has now."""
        available = self._get(conn, product_id).available
        return failed_precondition(
            "OUT_OF_STOCK",
            f"{product_id}: {wanted}, {available} available",
            product_id=product_id,
            available=available,
            **details,
        )

    @staticmethod
    def _claim(conn: Connection, order_id: str, status: str, now) -> bool:
        """Insert an order's reservation row with `status` (INSERT ... ON
        CONFLICT DO NOTHING): True if this call made it, False if it was there."""
        return db.insert_if_absent(
            conn, reservations, dict(order_id=order_id, status=status, created_at=now, updated_at=now)
        )

    @staticmethod
    def _find(conn: Connection, product_id: str):
        return conn.execute(_SELECT_PRODUCT, {"w_product_id": product_id}).first()

    def _get(self, conn: Connection, product_id: str) -> Product:
        row = self._find(conn, product_id)
        if row is None:
            raise not_found("product", product_id)
        return _product(row)

    @staticmethod
    def _reservation(conn: Connection, order_id: str) -> Reservation:
        status = conn.execute(
            sa.select(reservations.c.status).where(reservations.c.order_id == order_id)
        ).scalar_one()
        rows = conn.execute(
            sa.select(reservation_lines)
            .where(reservation_lines.c.order_id == order_id)
            .order_by(reservation_lines.c.product_id)
        )
        lines = tuple(ReservedLine(r.product_id, r.quantity, r.unit_price_cents, r.currency) for r in rows)
        return Reservation(order_id, status, lines)
