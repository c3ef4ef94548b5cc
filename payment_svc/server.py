"""PaymentService over gRPC: proto <-> domain, and nothing else.

Request bodies carry card numbers here: nothing in this module logs a
request or puts a card field's value into an error. Each request has passed
its field rules (declared in the proto) already.
"""

import datetime as dt
from collections.abc import Callable

from payment_svc import charges
from payment_svc.store import PaymentStore
from plumbing.errors import not_found
from plumbing.identity import current_caller, may_see
from plumbing.messages import to_message
from plumbing.timestamps import to_timestamp, utc_now
from plumbing.validation import PAYMENT_METHOD_ID, Violations
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PaymentService"].full_name


def payment_method_to_pb(method: charges.PaymentMethod) -> pb.PaymentMethod:
    return to_message(pb.PaymentMethod, method)


def payment_to_pb(payment: charges.Payment) -> pb.Payment:
    return to_message(
        pb.Payment,
        payment,
        status=pb.PaymentStatus.Value(payment.status),
        created_at=to_timestamp(payment.created_at),
        updated_at=to_timestamp(payment.updated_at),
    )


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, store: PaymentStore, clock: Callable[[], dt.datetime] = utc_now):
        self.store = store
        # Expiry is judged against this clock, at tokenization and at charge time.
        self.clock = clock

    def CreatePaymentMethod(self, request, context):
        card = request.card
        caller = current_caller()
        method = charges.tokenize(
            card.number, card.exp_month, card.exp_year, card.cvc, self.clock(), caller.subject if caller else None
        )
        self.store.add_payment_method(method)
        return payment_method_to_pb(method)

    def GetPaymentMethod(self, request, context):
        # Another customer's method is answered exactly as one never issued.
        method = self._payment_method(request.payment_method_id)
        test_token = method is not None and method.id in charges.TEST_TOKENS
        if method is None or not (test_token or may_see(current_caller(), method.customer_id)):
            raise not_found("payment method", request.payment_method_id)
        return payment_method_to_pb(method)

    def GetPayment(self, request, context):
        payment = self.store.get_payment(request.payment_id)
        if not may_see(current_caller(), payment.customer_id):
            raise not_found("payment", request.payment_id)
        return payment_to_pb(payment)

    def ListPayments(self, request, context):
        # Another customer's order lists nothing, exactly as an unknown order.
        caller = current_caller()
        payments = self.store.list_payments(request.order_id)
        return pb.ListPaymentsResponse(payments=[payment_to_pb(p) for p in payments if may_see(caller, p.customer_id)])

    def Charge(self, request, context):
        violations = Violations()
        method = self._payment_method(request.payment_method)
        if method is not None and not charges.usable_for(method, request.customer_id, request.owner_only):
            # Another customer's method: answered as one never issued.
            method = None
        if method is None:
            # Not quoted: a caller may have pasted a card number here.
            violations.add(
                "payment_method",
                "is not a known test token (tok_...) or payment method id (pm_...)",
            )
        violations.raise_if_any()
        authorization = charges.authorize(method, self.clock())
        payment = self.store.charge(
            request.order_id, request.amount_cents, request.currency, method, authorization, request.customer_id or None
        )
        return payment_to_pb(payment)

    def Void(self, request, context):
        payments = self.store.void(request.order_id)
        return pb.VoidResponse(payments=[payment_to_pb(p) for p in payments])

    def Refund(self, request, context):
        return payment_to_pb(self.store.refund(request.order_id))

    def _payment_method(self, reference: str) -> charges.PaymentMethod | None:
        if reference in charges.TEST_TOKENS:
            return charges.TEST_TOKENS[reference]
        if PAYMENT_METHOD_ID.fullmatch(reference):
            return self.store.find_payment_method(reference)
        return None
