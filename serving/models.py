"""Request bodies of the HTTP API (pydantic: FastAPI validates and documents them)."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from indexer.layout import VERSION_PATTERN

NAMED_VERSION = "^$|" + VERSION_PATTERN  # a version name, or "" for none (the default)

MAX_TEXT_CHARS = 2000  # CLIP reads 77 tokens; a longer text is refused, not silently cut

# An item id: 63 bits of a hash, never negative (pipelines/records.py), stored as int64; one
# outside is refused (422 naming the field) before it reaches numpy, which cannot hold it.
ItemId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class Body(BaseModel):
    """A request body: a field it does not define is refused (422 naming it), so a mistyped
    option ("kk": 5) is not silently left at its default."""

    model_config = ConfigDict(extra="forbid")


class QueryRequest(Body):
    image_base64: str | None = Field(None, description="An image file (JPEG, PNG, WebP, ...), base64.")
    embedding: list[float] | None = Field(None, description="A query embedding from the memory's encoder.")
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS,
                             description="A text query (open_clip memories): its CLIP text embedding "
                             "searches the image embeddings. Give exactly one of image_base64, "
                             "embedding, text, item_id or item_key.")
    item_id: ItemId | None = Field(None, description="An item of the memory, by id (a JSON number or "
                                   "a decimal string, as a neighbour's id_str): its stored embedding "
                                   "is the query (more like this).")
    item_key: str | None = Field(None, min_length=1, description="An item of the memory, by key (422 "
                                 "when the key names several items: give item_id).")
    k: int | None = Field(None, description="Neighbours to retrieve, 1 ... max_k (default 100).")
    aggregator: str | None = Field(None, description="plurality | distance | softmax | rank (default).")
    parameter: float | None = Field(None, description="xi (distance), tau (softmax) or alpha (rank).")
    unknown_below: float | None = Field(None, description="Answer 'unknown' below this vote share.")
    nprobe: int | None = Field(None, ge=1, description="IVF lists to visit, 1 ... nlist (default: "
                               "the version's tuned value; ignored by exact memories).")
    explain: bool = Field(True, description="Return every neighbour behind the decision.")
    rerank: str | None = Field(None, description="Re-rank the neighbours before voting: 'prototype' "
                               "(serving/rerank.py); '' for none (default: the server's).")
    min_version: str | None = Field(None, pattern=NAMED_VERSION,
                                    description="Answer from this version or a newer one "
                                    "(an edit's response names its version: read-your-writes); "
                                    "503 with Retry-After if it is not served in time.")


class ZeroShotRequest(QueryRequest):
    """An image (image_base64 or embedding) classified two ways: CLIP zero-shot over ``labels``
    (one prompt per label and template, text embeddings averaged per label: Radford et al.
    2021, prompt ensembling) and the memory's kNN vote (the other fields, as /v1/classify)."""

    labels: list[str] = Field(..., min_length=1, max_length=1000,
                              description="The candidate labels (distinct, non-empty).")
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."], min_length=1,
                                 max_length=100, description="Prompt templates; '{}' is replaced by "
                                 "the label (default: 'a photo of a {}.').")


class BatchRequest(Body):
    queries: list[QueryRequest]


class AddItem(Body):
    key: str = Field(..., min_length=1, description="Unique key (the item's id derives from it).")
    label: str = Field(..., min_length=1)
    image_base64: str | None = Field(None, description="The image (embedded by the memory's encoder).")
    embedding: list[float] | None = Field(None, description="Or its embedding from the memory's "
                                          "encoder (e.g. computed offline): give exactly one.")
    source: str = ""


class AddRequest(Body):
    items: list[AddItem]


class RollbackRequest(Body):
    to: str | None = Field(None, pattern=NAMED_VERSION, description="The version to serve again (default: LATEST's parent); "
                           "items unlearned since stay forgotten.")


class ForgetRequestBody(Body):
    ids: list[ItemId] = Field(default_factory=list, description="Items by id: JSON numbers or "
                              "decimal strings (a neighbour's id_str, as a browser must send a "
                              "64-bit id).")
    keys: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    purge: bool = Field(False, description="Also compact at once, so the items' bytes leave every "
                        "file of the live version (verified); otherwise compaction does it later.")
