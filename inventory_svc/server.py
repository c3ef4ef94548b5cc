"""InventoryService over gRPC: proto <-> domain, and nothing else. Each
request has passed its field rules (declared in the proto) already."""

from inventory_svc import stock
from inventory_svc.store import InventoryStore
from plumbing.errors import not_found
from plumbing.validation import requested_items
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InventoryService"].full_name


def product_to_pb(product: stock.Product) -> pb.Product:
    return pb.Product(
        product_id=product.product_id,
        name=product.name,
        price_cents=product.price_cents,
        currency=product.currency,
        available=product.available,
    )


def reservation_to_pb(reservation: stock.Reservation) -> pb.Reservation:
    return pb.Reservation(
        order_id=reservation.order_id,
        status=pb.ReservationStatus.Value(reservation.status),
        items=[
            pb.ReservedItem(
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price_cents=line.unit_price_cents,
                currency=line.currency,
            )
            for line in reservation.lines
        ],
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryStore):
        self.store = store

    def ListProducts(self, request, context):
        return pb.ListProductsResponse(products=[product_to_pb(p) for p in self.store.list_products()])

    def GetProduct(self, request, context):
        return product_to_pb(self.store.get_product(request.product_id))

    def CheckAvailability(self, request, context):
        quantities = stock.quantities_by_product(requested_items(request))
        found = self.store.get_products(list(quantities))
        for product_id in quantities:
            if product_id not in found:
                raise not_found("product", product_id)
        lines = [
            pb.ItemAvailability(
                product_id=product_id,
                quantity=quantity,
                available=found[product_id].available,
                in_stock=found[product_id].available >= quantity,
            )
            for product_id, quantity in quantities.items()
        ]
        return pb.CheckAvailabilityResponse(available=all(line.in_stock for line in lines), items=lines)

    def UpsertProduct(self, request, context):
        fields = {
            name: getattr(request, name) if request.HasField(name) else None
            for name in ("name", "price_cents", "currency", "available")
        }
        if fields["name"] is not None:
            fields["name"] = fields["name"].strip()
        return product_to_pb(self.store.upsert_product(request.product_id, **fields))

    def AdjustStock(self, request, context):
        product = self.store.adjust_stock(request.product_id, request.delta, request.reason)
        return product_to_pb(product)

    def Reserve(self, request, context):
        items = [(i.product_id, i.quantity) for i in request.items]
        reservation = self.store.reserve(request.order_id, stock.quantities_by_product(items))
        return reservation_to_pb(reservation)

    def Release(self, request, context):
        return reservation_to_pb(self.store.release(request.order_id))
