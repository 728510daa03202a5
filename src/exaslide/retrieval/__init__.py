"""Case-based retrieval: embeddings, vector indexes, image and text search (see
``docs/retrieval.md``)."""
