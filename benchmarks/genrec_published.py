"""Published next-item figures to print beside the generative-retrieval benchmark's rows, with their sources.

Only figures and where they were read; ``published_for(catalog path)`` picks the entries for the data set the
catalog's folder names (``amazon-scientific``, ``movielens-small``). ``same_data`` says whether the entry is on
this exact preprocessing (else: the nearest published protocol, printed as other data)."""

from __future__ import annotations

from pathlib import Path

# data set folder -> entries {model, dataset, same_data, recall@5, recall@10, ndcg@5, ndcg@10, source}
PUBLISHED: dict[str, list[dict]] = {
    "amazon-scientific": [
        {
            "model": "TIGER (semantic IDs, T5 encoder-decoder)",
            "dataset": "Amazon Beauty",
            "same_data": False,
            "recall@5": None,
            "recall@10": 0.0648,
            "ndcg@5": None,
            "ndcg@10": None,
            "source": "Rajput et al., NeurIPS 2023 (TIGER), results table; figure as quoted in issue 23",
        },
        {
            "model": "SASRec (item IDs)",
            "dataset": "Amazon Beauty",
            "same_data": False,
            "recall@5": None,
            "recall@10": 0.0605,
            "ndcg@5": None,
            "ndcg@10": None,
            "source": "Rajput et al., NeurIPS 2023 (TIGER), results table; figure as quoted in issue 23",
        },
        {
            "model": "Recformer (text-based, not semantic IDs)",
            "dataset": "Amazon Industrial & Scientific, Recformer's own preprocessing",
            "same_data": False,
            "recall@5": None,
            "recall@10": 0.1448,
            "ndcg@5": None,
            "ndcg@10": 0.1027,
            "source": "Li et al., KDD 2023 (Recformer) Table 2, as quoted in github.com/ElaineXHZhong/"
            "Transformer-based-Sequential-Recommendation-System experiments/zero-shot/Paper.md",
        },
    ],
    # No figure on ml-latest-small under this protocol, nor any semantic-ID generator on MovieLens, was found;
    # these are the nearest: item-id SASRec on ML-1M with full ranking, and a generator over item tokens on ML-100K.
    "movielens-small": [
        {
            "model": "SASRec+ (item IDs, full-softmax loss)",
            "dataset": "MovieLens-1M (BERT4Rec's preprocessing, sequences up to 200, seen items filtered)",
            "same_data": False,
            "recall@5": None,
            "recall@10": 0.3152,
            "ndcg@5": None,
            "ndcg@10": 0.1821,
            "source": "Klenitskiy and Vasilev, RecSys 2023 (Turning Dross Into Gold Loss), as read in the authors' "
            "repository antklen/sasrec-bert4rec-recsys23, README.md, MovieLens-1m table",
        },
        {
            "model": "SASRec (item IDs, original binary cross-entropy)",
            "dataset": "MovieLens-1M (BERT4Rec's preprocessing, sequences up to 200, seen items filtered)",
            "same_data": False,
            "recall@5": None,
            "recall@10": 0.2500,
            "ndcg@5": None,
            "ndcg@10": 0.1341,
            "source": "Klenitskiy and Vasilev, RecSys 2023, as read in antklen/sasrec-bert4rec-recsys23, README.md",
        },
        {
            "model": "OpenP5-C (T5 over collaborative-indexing item tokens, constrained beam search)",
            "dataset": "MovieLens-100K (943 users, 1,349 items), leave-one-out",
            "same_data": False,
            "recall@5": 0.0530,
            "recall@10": 0.1006,
            "ndcg@5": 0.0331,
            "ndcg@10": 0.0481,
            "source": "Xu, Hua and Zhang, arXiv 2306.11134 (OpenP5), agiresearch/OpenP5 OpenP5_more_results.pdf, "
            "sequential task, seen prompts",
        },
    ],
}


def published_for(catalog: str | Path) -> list[dict]:
    """Entries for the catalog's data set (matched on its folder name), [] when none are recorded."""
    parts = {p.lower() for p in Path(catalog).parts}
    return [e for key, entries in PUBLISHED.items() if key in parts for e in entries]
