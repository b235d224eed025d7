"""What each provider's embeddings or rerank API looks like: endpoint, auth header, body, response path.

Templates are JSON values in which a string that is exactly "{{texts}}" becomes the list of
texts, exactly "{{text}}" the one text (one text per call), and "{{model}}" (alone or
inside a string) the upstream model; header values may hold "{{api_key}}". A rerank
provider's template (kind "rerank") has "{{query}}" (the query) and "{{documents}}" (the list
of documents) instead of the texts; its response path finds the relevance scores and its index
path each score's document index. Substitution happens on the parsed JSON
(providers/clients.py), never by pasting strings into JSON text. Each preset's shape was
checked against the provider's public API reference, cited above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CUSTOM = "custom"
BEARER = {"Authorization": "Bearer {{api_key}}"}
EMBED, RERANK = "embed", "rerank"
KINDS = (EMBED, RERANK)  # what a provider computes: vectors, or a query's relevance scores for documents


@dataclass(frozen=True)
class Preset:
    name: str
    endpoint: str  # "" = the tenant must give one (Azure: the deployment's URL)
    request_template: dict
    response_path: str  # JSONPath to the list of vectors, in input order (rerank: to the relevance scores)
    headers: dict[str, str] = field(default_factory=lambda: dict(BEARER))
    max_inputs: int = 128  # texts per upstream call (rerank: documents per call)
    default_model: str = ""
    usage_path: str = ""  # JSONPath to the call's total input tokens, where the API reports it
    docs: str = ""
    kind: str = EMBED
    index_path: str = ""  # rerank: JSONPath to each score's document index (results come best first)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # https://platform.openai.com/docs/api-reference/embeddings/create
        # POST {"model", "input": [..] (at most 2048 inputs), "encoding_format": "float"}
        # -> {"data": [{"index", "embedding": [..]}], "usage": {"prompt_tokens", "total_tokens"}}
        Preset(
            name="openai",
            endpoint="https://api.openai.com/v1/embeddings",
            request_template={"model": "{{model}}", "input": "{{texts}}", "encoding_format": "float"},
            response_path="$.data[*].embedding",
            max_inputs=2048,
            default_model="text-embedding-3-small",
            usage_path="$.usage.prompt_tokens",
            docs="https://platform.openai.com/docs/api-reference/embeddings/create",
        ),
        # https://learn.microsoft.com/en-us/azure/ai-services/openai/reference#embeddings
        # POST https://{resource}.openai.azure.com/openai/deployments/{deployment}/embeddings?api-version=2024-02-01
        # header `api-key`; body {"input": [..]} (the deployment fixes the model); response as OpenAI's.
        Preset(
            name="azure-openai",
            endpoint="",
            request_template={"input": "{{texts}}"},
            response_path="$.data[*].embedding",
            headers={"api-key": "{{api_key}}"},
            max_inputs=2048,
            usage_path="$.usage.prompt_tokens",
            docs="https://learn.microsoft.com/en-us/azure/ai-services/openai/reference#embeddings",
        ),
        # https://docs.cohere.com/reference/embed (v2)
        # POST {"model", "texts": [..] (at most 96), "input_type", "embedding_types": ["float"]}
        # -> {"embeddings": {"float": [[..], ..]}, "meta": {"billed_units": {"input_tokens"}}}
        Preset(
            name="cohere",
            endpoint="https://api.cohere.com/v2/embed",
            request_template={
                "model": "{{model}}",
                "texts": "{{texts}}",
                "input_type": "search_document",
                "embedding_types": ["float"],
            },
            response_path="$.embeddings.float[*]",
            max_inputs=96,
            default_model="embed-english-v3.0",
            usage_path="$.meta.billed_units.input_tokens",
            docs="https://docs.cohere.com/reference/embed",
        ),
        # https://docs.voyageai.com/reference/embeddings-api
        # POST {"model", "input": [..] (at most 1,000)} -> {"data": [{"embedding", "index"}], "usage": {"total_tokens"}}
        Preset(
            name="voyage",
            endpoint="https://api.voyageai.com/v1/embeddings",
            request_template={"model": "{{model}}", "input": "{{texts}}"},
            response_path="$.data[*].embedding",
            max_inputs=1000,
            default_model="voyage-3.5",
            usage_path="$.usage.total_tokens",
            docs="https://docs.voyageai.com/reference/embeddings-api",
        ),
        # https://docs.mistral.ai/api/endpoint/embeddings
        # POST {"model", "input": [..]} -> {"data": [{"embedding", "index"}], "usage": {"prompt_tokens"}}.
        # The reference states no list limit (the limit is in tokens per request): 128 stays well inside it.
        Preset(
            name="mistral",
            endpoint="https://api.mistral.ai/v1/embeddings",
            request_template={"model": "{{model}}", "input": "{{texts}}"},
            response_path="$.data[*].embedding",
            max_inputs=128,
            default_model="mistral-embed",
            usage_path="$.usage.prompt_tokens",
            docs="https://docs.mistral.ai/api/endpoint/embeddings",
        ),
        # https://api.jina.ai/openapi.json (POST /v1/embeddings; https://jina.ai/embeddings/)
        # POST {"model", "input": [..], "embedding_type": "float"} -> {"data": [{"embedding", "index"}], "usage": {"total_tokens"}}
        # The list limit is not stated in the reference; 512 is conservative.
        Preset(
            name="jina",
            endpoint="https://api.jina.ai/v1/embeddings",
            request_template={"model": "{{model}}", "input": "{{texts}}", "embedding_type": "float"},
            response_path="$.data[*].embedding",
            max_inputs=512,
            default_model="jina-embeddings-v3",
            usage_path="$.usage.total_tokens",
            docs="https://api.jina.ai/openapi.json",
        ),
        # --- rerank (kind "rerank"): one call per query; top_n is never sent, so that every
        # document's score comes back (the platform caches each pair and applies top_n itself).
        # https://docs.cohere.com/reference/rerank (v2)
        # POST {"model", "query", "documents": [..], "top_n"?} (at most 1,000 documents recommended)
        # -> {"id", "results": [{"index", "relevance_score"}], "meta": {"billed_units": {"search_units"}}}
        # (search units are not tokens: no usage path).
        Preset(
            name="cohere-rerank",
            endpoint="https://api.cohere.com/v2/rerank",
            request_template={"model": "{{model}}", "query": "{{query}}", "documents": "{{documents}}"},
            response_path="$.results[*].relevance_score",
            index_path="$.results[*].index",
            max_inputs=1000,
            default_model="rerank-v3.5",
            docs="https://docs.cohere.com/reference/rerank",
            kind=RERANK,
        ),
        # https://api.jina.ai/openapi.json (POST /v1/rerank; https://jina.ai/reranker/)
        # POST {"model", "query", "documents": [..], "top_n"?, "return_documents"} -> {"model",
        # "results": [{"index", "relevance_score", "document"?}], "usage": {"total_tokens"}}.
        # return_documents is true by default there: false keeps the documents out of the answer.
        # The list limit is not stated in the reference; 1,000 as Cohere's and Voyage's.
        Preset(
            name="jina-rerank",
            endpoint="https://api.jina.ai/v1/rerank",
            request_template={"model": "{{model}}", "query": "{{query}}", "documents": "{{documents}}",
                              "return_documents": False},
            response_path="$.results[*].relevance_score",
            index_path="$.results[*].index",
            max_inputs=1000,
            default_model="jina-reranker-v2-base-multilingual",
            usage_path="$.usage.total_tokens",
            docs="https://api.jina.ai/openapi.json",
            kind=RERANK,
        ),
        # https://docs.voyageai.com/reference/reranker-api
        # POST {"query", "documents": [..] (at most 1,000), "model", "top_k"?} -> {"object": "list",
        # "data": [{"index", "relevance_score"}], "model", "usage": {"total_tokens"}}
        Preset(
            name="voyage-rerank",
            endpoint="https://api.voyageai.com/v1/rerank",
            request_template={"query": "{{query}}", "documents": "{{documents}}", "model": "{{model}}"},
            response_path="$.data[*].relevance_score",
            index_path="$.data[*].index",
            max_inputs=1000,
            default_model="rerank-2.5",
            usage_path="$.usage.total_tokens",
            docs="https://docs.voyageai.com/reference/reranker-api",
            kind=RERANK,
        ),
    )
}

PRESET_CHOICES = [*PRESETS, CUSTOM]
CUSTOM_MAX_INPUTS = 128
CUSTOM_MAX_DOCUMENTS = 1000  # a custom rerank provider's documents per call, unless max_inputs says otherwise


def preset_get(name: str) -> Preset | None:
    return PRESETS.get(name)
