"""Payment persistence: tokenized cards, payments, and one charge claim per
order.

The claim row (charge_claims, keyed by order_id) makes the saga steps final
whatever the concurrency, on SQLite or PostgreSQL, with any number of
replicas sharing the database: the first Charge or Void of an order inserts it
(INSERT ... ON CONFLICT DO NOTHING), and every later Charge or Void of that
order waits for that transaction and then sees what it did. A Charge that
claims the row records the order's one payment in the same transaction; a
Void marks the row voided, so no Charge can follow it.
"""

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from payment_svc import charges, metrics
from payment_svc.charges import Authorization, Payment, PaymentMethod, PaymentStatus
from plumbing import db, migrations
from plumbing.errors import ShopError, failed_precondition, not_found
from plumbing.timestamps import as_utc, utc_now

metadata = sa.MetaData()
# 'CAPTURED', 'DECLINED', 'REFUNDED': what a payment's status may be.
_STATUSES = ", ".join(f"'{status}'" for status in PaymentStatus)

# Only what may be kept of a card: never its number or CVC.
payment_methods = sa.Table(
    "payment_methods",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("card_brand", sa.String(16), nullable=False),
    sa.Column("card_last4", sa.String(4), nullable=False),
    sa.Column("exp_month", sa.Integer, nullable=False),
    sa.Column("exp_year", sa.Integer, nullable=False),
    sa.Column("processor_outcome", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # Who made it (AUTH=jwt); NULL: made without an identity (AUTH=off).
    sa.Column("customer_id", sa.String(64), nullable=True),
)

charge_claims = sa.Table(
    "charge_claims",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    # The payment the claiming Charge recorded; NULL when a Void came first.
    sa.Column("payment_id", sa.String(32), nullable=True),
    sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("order_id", sa.String(64), sa.ForeignKey("charge_claims.order_id"), nullable=False, index=True),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("card_brand", sa.String(16), nullable=False),
    sa.Column("card_last4", sa.String(4), nullable=False),
    sa.Column("decline_reason", sa.String(32), nullable=False),
    # The test token or pm_ id charged: a reference, never card data.
    sa.Column("payment_method", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # The order's owner; NULL for payments recorded before owners were kept.
    sa.Column("customer_id", sa.String(64), nullable=True),
    sa.CheckConstraint("amount_cents > 0", name="amount_positive"),
    sa.CheckConstraint(f"status IN ({_STATUSES})", name="known_status"),
)

MIGRATIONS = (
    lambda conn: metadata.create_all(conn),
    # Owners (AUTH=jwt): a customer sees and charges only their own.
    lambda conn: (
        migrations.add_missing_columns(conn, payment_methods, "customer_id"),
        migrations.add_missing_columns(conn, payments, "customer_id"),
    ),
)

# Built once, not per charge (building a statement cost more than running it).
_INSERT_PAYMENT = payments.insert()


def _payment(row) -> Payment:
    return Payment(
        id=row.id,
        order_id=row.order_id,
        amount_cents=row.amount_cents,
        currency=row.currency,
        status=PaymentStatus(row.status),
        card_brand=row.card_brand,
        card_last4=row.card_last4,
        decline_reason=row.decline_reason,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        customer_id=row.customer_id,
    )


def no_payment_for_order(order_id: str) -> ShopError:
    return dataclasses.replace(
        not_found("payment", order_id),
        message=f"order {order_id} has no payment",
        metadata={"resource": "payment", "order_id": order_id},
    )


def order_voided(order_id: str) -> ShopError:
    return failed_precondition(
        "ORDER_VOIDED", f"order {order_id} has been voided; it cannot be charged", order_id=order_id
    )


class PaymentStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def migrate(self) -> None:
        migrations.migrate(self.engine, metadata, MIGRATIONS)

    # Payment methods

    def add_payment_method(self, method: PaymentMethod) -> None:
        with db.write(self.engine) as conn:
            conn.execute(
                payment_methods.insert().values(
                    id=method.id,
                    card_brand=method.card_brand,
                    card_last4=method.card_last4,
                    exp_month=method.exp_month,
                    exp_year=method.exp_year,
                    processor_outcome=method.processor_outcome,
                    created_at=utc_now(),
                    customer_id=method.customer_id,
                )
            )

    def find_payment_method(self, method_id: str) -> PaymentMethod | None:
        with db.read(self.engine) as conn:
            row = conn.execute(sa.select(payment_methods).where(payment_methods.c.id == method_id)).first()
        if row is None:
            return None
        return PaymentMethod(
            row.id, row.card_brand, row.card_last4, row.exp_month, row.exp_year, row.processor_outcome, row.customer_id
        )

    # Saga steps

    def charge(
        self,
        order_id: str,
        amount_cents: int,
        currency: str,
        method: PaymentMethod,
        authorization: Authorization,
        customer_id: str | None = None,
    ) -> Payment:
        """Record the order's one payment (owned by `customer_id`, the
        order's owner), or return the one already recorded.

        Idempotent by order_id: only the caller that claims the order's row
        records a payment; a repeat, or a concurrent duplicate on another
        replica, gets the first one. A voided order is refused.
        """
        with db.write(self.engine) as conn:
            now = utc_now()
            payment_id = charges.new_payment_id()
            claimed = db.insert_if_absent(
                conn,
                charge_claims,
                dict(order_id=order_id, payment_id=payment_id, created_at=now, updated_at=now),
            )
            if not claimed:
                # Locked, so a Void in flight on this row finishes first.
                claim = conn.execute(
                    sa.select(charge_claims).where(charge_claims.c.order_id == order_id).with_for_update()
                ).one()
                if claim.voided_at is not None:
                    raise order_voided(order_id)
                return self._get(conn, claim.payment_id)
            payment = Payment(
                id=payment_id,
                order_id=order_id,
                amount_cents=amount_cents,
                currency=currency,
                status=authorization.status,
                card_brand=method.card_brand,
                card_last4=method.card_last4,
                decline_reason=authorization.decline_reason,
                created_at=now,
                updated_at=now,
                customer_id=customer_id,
            )
            conn.execute(_INSERT_PAYMENT, {**payment.__dict__, "payment_method": method.id})
        metrics.payment_recorded(payment)
        return payment

    def void(self, order_id: str) -> list[Payment]:
        """Settle an order's unknown outcome for good: no Charge may follow,
        and a capture, if there is one, is refunded. Idempotent."""
        with db.write(self.engine) as conn:
            now = utc_now()
            # A tombstone if no Charge came first; if one is in flight, this
            # waits for it, then sees its payment below.
            db.insert_if_absent(
                conn,
                charge_claims,
                dict(order_id=order_id, payment_id=None, voided_at=now, created_at=now, updated_at=now),
            )
            conn.execute(
                charge_claims.update()
                .where(charge_claims.c.order_id == order_id, charge_claims.c.voided_at.is_(None))
                .values(voided_at=now, updated_at=now)
            )
            refunded = self._refund_capture(conn, order_id, now)
            order_payments = self._order_payments(conn, order_id)
        if refunded is not None:
            metrics.payment_recorded(refunded)
        return order_payments

    def refund(self, order_id: str) -> Payment:
        """Refund the order's capture; a repeat returns the refunded payment."""
        with db.write(self.engine) as conn:
            refunded = self._refund_capture(conn, order_id, utc_now())
            if refunded is None:
                return self._refunded_before(conn, order_id)
        metrics.payment_recorded(refunded)
        return refunded

    def _refunded_before(self, conn: Connection, order_id: str) -> Payment:
        """A Refund that moved nothing: a repeat gets the refunded payment, anything else is refused."""
        existing = self._order_payments(conn, order_id)
        if not existing:
            raise no_payment_for_order(order_id)
        for payment in existing:
            if payment.status == PaymentStatus.REFUNDED:
                return payment
        raise failed_precondition(
            "NOT_REFUNDABLE",
            f"order {order_id} has no captured payment to refund (it was {existing[0].status.lower()})",
            order_id=order_id,
            payment_id=existing[0].id,
        )

    # Reads

    def get_payment(self, payment_id: str) -> Payment:
        with db.read(self.engine) as conn:
            return self._get(conn, payment_id)

    def list_payments(self, order_id: str) -> list[Payment]:
        with db.read(self.engine) as conn:
            return self._order_payments(conn, order_id)

    # Helpers

    @staticmethod
    def _get(conn: Connection, payment_id: str) -> Payment:
        row = conn.execute(sa.select(payments).where(payments.c.id == payment_id)).first()
        if row is None:
            raise not_found("payment", payment_id)
        return _payment(row)

    @staticmethod
    def _order_payments(conn: Connection, order_id: str) -> list[Payment]:
        rows = conn.execute(
            sa.select(payments)
            .where(payments.c.order_id == order_id)
            .order_by(payments.c.created_at, payments.c.id)
        )
        return [_payment(r) for r in rows]

    @staticmethod
    def _refund_capture(conn: Connection, order_id: str, now: dt.datetime) -> Payment | None:
        """Compare-and-set CAPTURED -> REFUNDED: of two callers, one moves it."""
        row = conn.execute(
            payments.update()
            .where(payments.c.order_id == order_id, payments.c.status == PaymentStatus.CAPTURED)
            .values(status=PaymentStatus.REFUNDED, updated_at=now)
            .returning(*payments.c)
        ).first()
        return None if row is None else _payment(row)
