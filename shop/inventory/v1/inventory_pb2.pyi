from google.api import annotations_pb2 as _annotations_pb2
from shop.api.v1 import field_rules_pb2 as _field_rules_pb2
from shop.api.v1 import http_options_pb2 as _http_options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReservationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATUS_UNSPECIFIED: _ClassVar[ReservationStatus]
    RESERVED: _ClassVar[ReservationStatus]
    RELEASED: _ClassVar[ReservationStatus]
RESERVATION_STATUS_UNSPECIFIED: ReservationStatus
RESERVED: ReservationStatus
RELEASED: ReservationStatus

class Product(_message.Message):
    __slots__ = ("product_id", "name", "price_cents", "currency", "available")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    name: str
    price_cents: int
    currency: str
    available: int
    def __init__(self, product_id: _Optional[str] = ..., name: _Optional[str] = ..., price_cents: _Optional[int] = ..., currency: _Optional[str] = ..., available: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("product_id", "quantity")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    quantity: int
    def __init__(self, product_id: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("products",)
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[Product]
    def __init__(self, products: _Optional[_Iterable[_Union[Product, _Mapping]]] = ...) -> None: ...

class GetProductRequest(_message.Message):
    __slots__ = ("product_id",)
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    def __init__(self, product_id: _Optional[str] = ...) -> None: ...

class CheckAvailabilityRequest(_message.Message):
    __slots__ = ("items", "product_id", "quantity")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    product_id: str
    quantity: int
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., product_id: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class ItemAvailability(_message.Message):
    __slots__ = ("product_id", "quantity", "available", "in_stock")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    quantity: int
    available: int
    in_stock: bool
    def __init__(self, product_id: _Optional[str] = ..., quantity: _Optional[int] = ..., available: _Optional[int] = ..., in_stock: _Optional[bool] = ...) -> None: ...

class CheckAvailabilityResponse(_message.Message):
    __slots__ = ("available", "items")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    available: bool
    items: _containers.RepeatedCompositeFieldContainer[ItemAvailability]
    def __init__(self, available: _Optional[bool] = ..., items: _Optional[_Iterable[_Union[ItemAvailability, _Mapping]]] = ...) -> None: ...

class UpsertProductRequest(_message.Message):
    __slots__ = ("product_id", "name", "price_cents", "currency", "available")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    name: str
    price_cents: int
    currency: str
    available: int
    def __init__(self, product_id: _Optional[str] = ..., name: _Optional[str] = ..., price_cents: _Optional[int] = ..., currency: _Optional[str] = ..., available: _Optional[int] = ...) -> None: ...

class AdjustStockRequest(_message.Message):
    __slots__ = ("product_id", "delta", "reason")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    delta: int
    reason: str
    def __init__(self, product_id: _Optional[str] = ..., delta: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("order_id", "items")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, order_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class ReservedItem(_message.Message):
    __slots__ = ("product_id", "quantity", "unit_price_cents", "currency")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    quantity: int
    unit_price_cents: int
    currency: str
    def __init__(self, product_id: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price_cents: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("order_id", "status", "items")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    status: ReservationStatus
    items: _containers.RepeatedCompositeFieldContainer[ReservedItem]
    def __init__(self, order_id: _Optional[str] = ..., status: _Optional[_Union[ReservationStatus, str]] = ..., items: _Optional[_Iterable[_Union[ReservedItem, _Mapping]]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...
