"""What a results folder says about its run, worded once for the console and report.md: the method label,
which evaluation a perplexity comes from, why fewer tokens are scored than read, and the seeds."""

from __future__ import annotations

from ..evaluation.protocols import DOCUMENT_MAX_TOKENS

# docs/ is not installed with the package, and a relative link breaks once a results folder leaves the
# repository (pyproject names no project URL to link to instead): the file is named, not linked.
METRICS_REFERENCE = "docs/metrics.md in the prunescope repository"
NOT_COMPARABLE = "figures from another token count or corpus are not comparable"


def method_label(method: str, allocation: str = "uniform", refine: str = "none") -> str:
    """'wanda', 'wanda+owl', 'wanda+dsnot', 'wanda+owl+dsnot': the one name of a method with its
    non-uniform allocation and its refinement (a sweep's curves, a study's title and report header)."""
    parts = [method, allocation if allocation != "uniform" else "", refine if refine != "none" else ""]
    return "+".join(part for part in parts if part)


def method_text(spec: dict) -> str:
    """`method_label` of a run.json prune_spec (which names allocation and refine only when they apply)."""
    return method_label(spec["method"], spec.get("allocation", "uniform"), spec.get("refine", "none"))


def prune_text(spec: dict) -> str:
    """'wanda+owl+dsnot 0.3 (row, unstructured)': what was pruned, for titles."""
    return f"{method_text(spec)} {spec['sparsity']:g} ({spec['scope']}, {spec['pattern']})"


def seed_label(run: dict) -> str:
    """'seeds 0, 1' when the study repeated its pruning per seed, else 'seed 0'."""
    ran = run.get("seeds") or []
    if len(ran) > 1:
        return f"seeds {', '.join(map(str, ran))}"
    return f"seed {run['prune_spec']['seed']}"


def study_title(run: dict) -> str:
    """'demo: wanda+owl+dsnot 0.3 (row, unstructured), seeds 0, 1': the console's first line."""
    return f"{run['model']['name']}: {prune_text(run['prune_spec'])}, {seed_label(run)}"


def seeds_text(run: dict) -> str:
    """What the seeds mean for the figures: '' for one seed, else the mean ± std over them, or why --seeds
    did not repeat the pruning."""
    ran = run.get("seeds") or []
    if len(ran) > 1:
        return (
            f"every figure that varies with the seed is the mean ± sample standard deviation over the "
            f"{len(ran)} seeds {', '.join(map(str, ran))} (each seed's rows: seeds.csv)"
        )
    spec = run["prune_spec"]
    requested = run.get("config", {}).get("run", {}).get("seeds") or []
    if len(requested) > 1:
        return f"--seeds ran once: {method_text(spec)} does not depend on the seed"
    return ""


def corpus_text(evaluation: dict) -> str:
    """The corpus as the evaluation recorded it: its name (builtin texts: which), and its split."""
    split = f" ({evaluation['split']})" if evaluation.get("split") else ""
    return f"{evaluation['dataset']}{split}"


def _corpus_tokens(evaluation: dict) -> int:
    """The corpus tokens the windows cover. The rolling protocol's windows re-read earlier tokens as
    context, so there the scored tokens are the corpus's (each is predicted once)."""
    if evaluation.get("ppl_protocol") == "rolling":
        return evaluation["tokens_scored"]
    return evaluation["tokens"]


def count_text(n: int, noun: str) -> str:
    """'1 document', '4,096 documents'."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def token_budget(evaluation: dict, max_tokens: int | None) -> str:
    """The --max-tokens that chose the tokens: given, the document protocol's default, or none."""
    if max_tokens is not None and evaluation.get("ppl_protocol") == "rolling":
        # protocols.RollingProtocol.build stops after the document that reaches the budget
        return f"--max-tokens {max_tokens}, in whole documents"
    if max_tokens is not None:
        return f"--max-tokens {max_tokens}"
    if evaluation.get("ppl_protocol", "document") == "document":
        return f"--max-tokens {DOCUMENT_MAX_TOKENS}, the default"
    return "no --max-tokens"


def perplexity_scope(evaluation: dict, max_tokens: int | None) -> str:
    """'perplexity on 4,096 tokens of <corpus> (--max-tokens 4096, the default); ... not comparable'."""
    return (
        f"perplexity on {_corpus_tokens(evaluation):,} tokens of {corpus_text(evaluation)} "
        f"({token_budget(evaluation, max_tokens)}); {NOT_COMPARABLE}"
    )


def scored_tokens_reason(evaluation: dict) -> str:
    """Tokens read, tokens scored, and the protocol's reason they differ (evaluation/protocols.py)."""
    read, scored = evaluation["tokens"], evaluation["tokens_scored"]
    windows, documents = evaluation["windows"], evaluation.get("documents")
    counts = f"{read:,} tokens read, {scored:,} scored"
    if evaluation.get("ppl_protocol") == "rolling":
        # lm-eval's rolling windows: a document's first token is predicted from the prefix token; later
        # windows re-read up to seqlen earlier tokens as context without scoring them again.
        reread = read - scored
        context = (
            f"; the other {reread:,} are context re-read by the later windows of documents longer than "
            f"seqlen {evaluation['seqlen']}"
            if reread
            else ""
        )
        return (
            f"{counts}: each token of the {count_text(documents, 'document')} is predicted once, the first "
            f"from the prefix token{context}"
        )
    if read - scored == windows:
        # document and joined windows: position i predicts token i + 1, so a window's first token only
        # ever serves as context.
        first = f"the first token of each of the {windows:,} windows"
        if windows == 1:
            first = "the window's first token"
        return f"{counts} ({first} has no context to predict it)"
    return counts


def max_tokens(config: dict) -> int | None:
    """--max-tokens of a run.json "config" (a study's option groups)."""
    return config.get("evaluation", {}).get("max_tokens")


def evaluation_lines(run: dict) -> list[str]:
    """How perplexity was measured, on which tokens, and why fewer are scored than read."""
    evaluation = run["evaluation"]
    return [
        *([evaluation["protocol"]] if evaluation.get("protocol") else []),
        perplexity_scope(evaluation, max_tokens(run.get("config", {}))),
        scored_tokens_reason(evaluation),
    ]
