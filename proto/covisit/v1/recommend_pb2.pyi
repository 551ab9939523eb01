from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendItemsRequest(_message.Message):
    __slots__ = ("user_id", "context_items", "k", "exclude_items", "exclude_seen", "allowed_items", "categories")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    context_items: _containers.RepeatedScalarFieldContainer[str]
    k: int
    exclude_items: _containers.RepeatedScalarFieldContainer[str]
    exclude_seen: bool
    allowed_items: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., context_items: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., exclude_items: _Optional[_Iterable[str]] = ..., exclude_seen: _Optional[bool] = ..., allowed_items: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "source")
    class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SOURCE_UNSPECIFIED: _ClassVar[RecommendedItem.Source]
        COOCCURRENCE: _ClassVar[RecommendedItem.Source]
        CONTENT: _ClassVar[RecommendedItem.Source]
        POPULARITY: _ClassVar[RecommendedItem.Source]
        EXPLORATION: _ClassVar[RecommendedItem.Source]
    SOURCE_UNSPECIFIED: RecommendedItem.Source
    COOCCURRENCE: RecommendedItem.Source
    CONTENT: RecommendedItem.Source
    POPULARITY: RecommendedItem.Source
    EXPLORATION: RecommendedItem.Source
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    source: RecommendedItem.Source
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[_Union[RecommendedItem.Source, str]] = ...) -> None: ...

class RecommendItemsResponse(_message.Message):
    __slots__ = ("items", "model_version", "request_id", "from_cache")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    request_id: str
    from_cache: bool
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ..., from_cache: _Optional[bool] = ...) -> None: ...

class GetSimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class GetSimilarItemsResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class BatchRecommendItemsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecommendItemsRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecommendItemsRequest, _Mapping]]] = ...) -> None: ...

class BatchRecommendItemsResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecommendItemsResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecommendItemsResponse, _Mapping]]] = ...) -> None: ...
