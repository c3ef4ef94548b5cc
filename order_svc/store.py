"""Order persistence: orders, their items, the idempotency key each was
placed with, the saga's step and lease.

Every change of an order is a compare-and-set (UPDATE ... WHERE id = :id AND
status = :status AND step = :step [AND lease_owner = :owner]) checked by the
row it returns, so two actors - a request and recovery, or two replicas -
never both move one order, on SQLite or PostgreSQL alike.
"""

import dataclasses
import datetime as dt
import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from order_svc.model import Cursor, Failure, Order, OrderItem, OrderStatus, Step
from plumbing import db, migrations
from plumbing.timestamps import as_utc, utc_now

metadata = sa.MetaData()

orders = sa.Table(
    "orders",
    metadata,
    # Insertion order: the tie-break of created_at in lists, and the keyset.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("step", sa.String(16), nullable=False),
    # The final status decided for an order being compensated.
    sa.Column("outcome", sa.String(16), nullable=False),
    # A test token or a pm_ id: a reference, never card data.
    sa.Column("payment_method", sa.String(64), nullable=False),
    sa.Column("total_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("payment_id", sa.String(64), nullable=False),
    # Kept with the order for good (the contract asks for at least 24 h).
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("request_fingerprint", sa.String(64), nullable=False),
    # The error a failed order answers with, so a retry gets the same one.
    sa.Column("failure_code", sa.String(32), nullable=True),
    sa.Column("failure_reason", sa.String(64), nullable=True),
    sa.Column("failure_message", sa.Text, nullable=True),
    # JSON: {"metadata": {...}, "violations": [[field, description], ...]}
    sa.Column("failure_details", sa.Text, nullable=True),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("customer_id", "idempotency_key", name="orders_idempotency_key"),
    sa.Index("orders_by_time", "created_at", "seq"),
    sa.Index("orders_by_customer_time", "customer_id", "created_at", "seq"),
    sa.Index("orders_unsettled", "status", "step", "updated_at"),
)

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("product_id", sa.String(64), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
)

# Orders whose idempotency key is still kept, oldest first: what the key
# purge reads (partial, so orders whose key is gone leave it).
_KEYED_BY_TIME = sa.Index(
    "orders_keyed_by_time",
    orders.c.created_at,
    orders.c.seq,
    sqlite_where=orders.c.idempotency_key.is_not(None),
    postgresql_where=orders.c.idempotency_key.is_not(None),
)

MIGRATIONS = (
    lambda conn: metadata.create_all(conn),
    # Idempotency keys expire (IDEMPOTENCY_KEY_TTL_H).
    lambda conn: _KEYED_BY_TIME.create(conn, checkfirst=True),
)

_ORDER_COLUMNS = {"status", "step", "outcome", "total_cents", "currency", "payment_id"}

# The statements of every order's path, built once: building a statement and
# its cache key on each call cost more than running it. (An UPDATE without
# .values() sets the columns named by its parameters; the WHERE takes w_*.)
_SELECT_ORDER = sa.select(orders).where(orders.c.id == sa.bindparam("w_id"))
_SELECT_ORDER_ITEMS = (
    sa.select(order_items).where(order_items.c.order_id == sa.bindparam("w_id")).order_by(order_items.c.line)
)
_SELECT_ITEMS = (
    sa.select(order_items)
    .where(order_items.c.order_id.in_(sa.bindparam("w_ids", expanding=True)))
    .order_by(order_items.c.order_id, order_items.c.line)
)
_INSERT_ITEMS = order_items.insert()
_PRICE_ITEMS = order_items.update().where(
    order_items.c.order_id == sa.bindparam("w_id"), order_items.c.line == sa.bindparam("w_line")
)
_CAS = orders.update().where(
    orders.c.id == sa.bindparam("w_id"),
    orders.c.status == sa.bindparam("w_status"),
    orders.c.step == sa.bindparam("w_step"),
)
_ADVANCE = {
    False: _CAS.returning(*orders.c),
    True: _CAS.where(orders.c.lease_owner == sa.bindparam("w_owner")).returning(*orders.c),
}
# The same CAS for a caller that holds the order already: only whether it moved.
_MOVE = {
    False: _CAS.returning(orders.c.seq),
    True: _CAS.where(orders.c.lease_owner == sa.bindparam("w_owner")).returning(orders.c.seq),
}
_SELECT_BY_IDEMPOTENCY_KEY = sa.select(orders.c.id, orders.c.request_fingerprint).where(
    orders.c.customer_id == sa.bindparam("w_customer_id"), orders.c.idempotency_key == sa.bindparam("w_key")
)
# One batch of keys past their retention. SKIP LOCKED (PostgreSQL; SQLite
# has one writer) lets replicas purge side by side, each its own rows.
_FORGET_KEYS = (
    orders.update()
    .where(
        orders.c.seq.in_(
            sa.select(orders.c.seq)
            .where(orders.c.idempotency_key.is_not(None), orders.c.created_at < sa.bindparam("w_before"))
            .order_by(orders.c.created_at, orders.c.seq)
            .limit(sa.bindparam("w_limit"))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(idempotency_key=None)
    .returning(orders.c.seq)
)




def _failure_columns(failure: Failure | None) -> dict:
    if failure is None:
        return dict(failure_code=None, failure_reason=None, failure_message=None, failure_details=None)
    details = {"metadata": failure.metadata, "violations": [list(v) for v in failure.violations]}
    return dict(
        failure_code=failure.code,
        failure_reason=failure.reason,
        failure_message=failure.message,
        failure_details=json.dumps(details, sort_keys=True),
    )


def _order(row, items: list) -> Order:
    failure = None
    if row.failure_code:
        details = json.loads(row.failure_details)
        failure = Failure(
            row.failure_code,
            row.failure_reason,
            row.failure_message,
            details["metadata"],
            tuple(tuple(v) for v in details["violations"]),
        )
    return Order(
        id=row.id,
        customer_id=row.customer_id,
        status=OrderStatus(row.status),
        items=tuple(OrderItem(i.product_id, i.quantity, i.unit_price_cents, i.currency) for i in items),
        payment_method=row.payment_method,
        total_cents=row.total_cents,
        currency=row.currency,
        payment_id=row.payment_id,
        step=Step(row.step),
        outcome=OrderStatus(row.outcome) if row.outcome else None,
        failure=failure,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        seq=row.seq,
    )


class OrderStore:
    """The saga's Store (order_svc.model) on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def migrate(self) -> None:
        migrations.migrate(self.engine, metadata, MIGRATIONS)

    # Placing

    def create(
        self, order: Order, idempotency_key: str, fingerprint: str, owner: str, lease_until: dt.datetime
    ) -> Order | None:
        """Store a new order with its lease held by `owner`. None if the
        customer's idempotency key is taken already (by a concurrent
        duplicate, on any replica)."""
        with db.write(self.engine) as conn:
            now = utc_now()
            inserted = db.insert_returning_key(
                conn,
                orders,
                dict(
                    id=order.id,
                    customer_id=order.customer_id,
                    status=order.status,
                    step=order.step,
                    outcome=order.outcome or "",
                    payment_method=order.payment_method,
                    total_cents=order.total_cents,
                    currency=order.currency,
                    payment_id=order.payment_id,
                    idempotency_key=idempotency_key or None,
                    request_fingerprint=fingerprint,
                    **_failure_columns(order.failure),
                    lease_owner=owner,
                    lease_expires_at=lease_until,
                    created_at=now,
                    updated_at=now,
                ),
            )
            if inserted is None:
                if not idempotency_key:
                    raise RuntimeError(f"order id {order.id} is taken")
                return None
            conn.execute(_INSERT_ITEMS, self._item_rows(order.id, order.items))
        # What was just stored, as a read would return it, without the read.
        return dataclasses.replace(order, created_at=now, updated_at=now, seq=inserted.seq)

    def find_by_idempotency_key(self, customer_id: str, key: str) -> tuple[Order, str] | None:
        """The order placed with this key, and its request's fingerprint."""
        with db.read(self.engine) as conn:
            row = conn.execute(_SELECT_BY_IDEMPOTENCY_KEY, {"w_customer_id": customer_id, "w_key": key}).first()
            if row is None:
                return None
            return self._load_one(conn, row.id), row.request_fingerprint

    def forget_idempotency_keys(self, placed_before: dt.datetime, limit: int) -> int:
        """Forget the idempotency keys of up to `limit` orders placed before
        `placed_before` (the orders stay); how many it forgot."""
        with db.write(self.engine) as conn:
            return len(conn.execute(_FORGET_KEYS, {"w_before": placed_before, "w_limit": limit}).all())

    # Reads

    def get(self, order_id: str) -> Order | None:
        with db.read(self.engine) as conn:
            return self._load_one(conn, order_id)

    def list_orders(self, customer_id: str, limit: int, cursor: Cursor | None) -> list[Order]:
        """Newest first: created_at, then seq, descending, after `cursor`."""
        query = sa.select(orders)
        if customer_id:
            query = query.where(orders.c.customer_id == customer_id)
        if cursor is not None:
            query = query.where(
                sa.or_(
                    orders.c.created_at < cursor.created_at,
                    sa.and_(orders.c.created_at == cursor.created_at, orders.c.seq < cursor.seq),
                )
            )
        query = query.order_by(orders.c.created_at.desc(), orders.c.seq.desc()).limit(limit)
        with db.read(self.engine) as conn:
            rows = conn.execute(query).all()
            return self._with_items(conn, rows)

    # Moving an order on

    def advance(
        self,
        order_id: str,
        expected: tuple[OrderStatus, Step],
        owner: str | None,
        lease_until: dt.datetime | None,
        failure: Failure | None = None,
        items: tuple[OrderItem, ...] | None = None,
        known: Order | None = None,
        **changes,
    ) -> Order | None:
        """Compare-and-set: apply `changes` if the order is at `expected`
        (status, step) and, unless owner is None, `owner` holds its lease.
        lease_until renews the lease; None ends it. None if the order had
        moved on.

        `items` prices the order's items: the same lines, with the unit
        prices and currency the reservation gave them. `known` is the order as the
        caller holds it at `expected` (the saga, which wrote it): the moved
        order is then made from it and the changes, not read back. Every
        column changes only with a move, and no order comes back to a step
        it has left, so the CAS succeeding proves `known` current."""
        unknown = set(changes) - _ORDER_COLUMNS
        if unknown:
            raise ValueError(f"not order columns: {sorted(unknown)}")
        status, step = expected
        now = utc_now()
        values = dict(changes, updated_at=now, w_id=order_id, w_status=status, w_step=step)
        if owner is not None:
            values.update(w_owner=owner)
        if failure is not None:
            values.update(_failure_columns(failure))
        if lease_until is None:
            values.update(lease_owner=None, lease_expires_at=None)
        else:
            values.update(lease_expires_at=lease_until)
        with db.write(self.engine) as conn:
            # RETURNING the whole row (or, with `known`, nothing to read):
            # the moved order without reading it again.
            statements = _ADVANCE if known is None else _MOVE
            row = conn.execute(statements[owner is not None], values).first()
            if row is None:
                return None
            if items is not None:
                conn.execute(
                    _PRICE_ITEMS,
                    [
                        {"w_id": order_id, "w_line": line, "unit_price_cents": i.unit_price_cents, "currency": i.currency}
                        for line, i in enumerate(items)
                    ],
                )
            if known is None:
                return _order(row, items) if items is not None else self._with_items(conn, [row])[0]
        return dataclasses.replace(
            known,
            **changes,
            items=items if items is not None else known.items,
            failure=failure if failure is not None else known.failure,
            updated_at=now,
        )

    def begin_cancel(self, order_id: str, owner: str, lease_until: dt.datetime) -> Order | None:
        """CONFIRMED -> CONFIRMED at step CANCELLING (also when a previous
        cancel was cut off). None if the order is not CONFIRMED any more."""
        with db.write(self.engine) as conn:
            moved = conn.execute(
                orders.update()
                .where(
                    orders.c.id == order_id,
                    orders.c.status == OrderStatus.CONFIRMED,
                    orders.c.step.in_((Step.AT_REST, Step.CANCELLING)),
                )
                .values(step=Step.CANCELLING, lease_owner=owner, lease_expires_at=lease_until, updated_at=utc_now())
                .returning(orders.c.id)
            ).first()
            return None if moved is None else self._load_one(conn, order_id)

    # Recovery

    def stuck_orders(self, now: dt.datetime, untouched_since: dt.datetime, limit: int) -> list[str]:
        """Orders mid-saga (or mid-cancel) whose lease has lapsed and that
        have not moved since `untouched_since`, oldest first."""
        query = (
            sa.select(orders.c.id)
            .where(*self._stuck(now, untouched_since))
            .order_by(orders.c.updated_at)
            .limit(limit)
        )
        with db.read(self.engine) as conn:
            return list(conn.execute(query).scalars())

    def claim(
        self, order_id: str, owner: str, now: dt.datetime, lease_until: dt.datetime, untouched_since: dt.datetime
    ) -> Order | None:
        """Take the lease of a stuck order: a conditional UPDATE, so of two
        replicas claiming at once one gets it. None if it is not stuck."""
        with db.write(self.engine) as conn:
            moved = conn.execute(
                orders.update()
                .where(orders.c.id == order_id, *self._stuck(now, untouched_since))
                .values(lease_owner=owner, lease_expires_at=lease_until)
                .returning(orders.c.id)
            ).first()
            return None if moved is None else self._load_one(conn, order_id)

    def oldest_pending_created_at(self) -> dt.datetime | None:
        """When the oldest order still PENDING was stored (None: there is none)."""
        with db.read(self.engine) as conn:
            oldest = conn.execute(
                sa.select(sa.func.min(orders.c.created_at)).where(orders.c.status == OrderStatus.PENDING)
            ).scalar_one()
        return as_utc(oldest)

    def release_lease(self, order_id: str, owner: str) -> None:
        """Give the lease up, so the next recovery pass may try again."""
        with db.write(self.engine) as conn:
            conn.execute(
                orders.update()
                .where(orders.c.id == order_id, orders.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    @staticmethod
    def _stuck(now: dt.datetime, untouched_since: dt.datetime) -> list:
        return [
            sa.or_(
                orders.c.status == OrderStatus.PENDING,
                sa.and_(orders.c.status == OrderStatus.CONFIRMED, orders.c.step == Step.CANCELLING),
            ),
            sa.or_(orders.c.lease_expires_at.is_(None), orders.c.lease_expires_at < now),
            orders.c.updated_at < untouched_since,
        ]

    # Helpers

    @staticmethod
    def _item_rows(order_id: str, items) -> list[dict]:
        return [
            dict(
                order_id=order_id,
                line=line,
                product_id=item.product_id,
                quantity=item.quantity,
                unit_price_cents=item.unit_price_cents,
                currency=item.currency,
            )
            for line, item in enumerate(items)
        ]

    def _load_one(self, conn: Connection, order_id: str) -> Order | None:
        rows = conn.execute(_SELECT_ORDER, {"w_id": order_id}).all()
        found = self._with_items(conn, rows)
        return found[0] if found else None

    @staticmethod
    def _with_items(conn: Connection, rows) -> list[Order]:
        if not rows:
            return []
        if len(rows) == 1:
            return [_order(rows[0], conn.execute(_SELECT_ORDER_ITEMS, {"w_id": rows[0].id}).all())]
        items: dict[str, list] = {row.id: [] for row in rows}
        for item in conn.execute(_SELECT_ITEMS, {"w_ids": list(items)}):
            items[item.order_id].append(item)
        return [_order(row, items[row.id]) for row in rows]
