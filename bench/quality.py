"""Quality of a lower-precision model against the reference, on fixed token sequences, teacher-forced.

Every engine sees the same sequences; the metrics compare its logits at every position with the
reference's: relative logit error, top-1 agreement and the mean KL divergence per token.
"""

from __future__ import annotations

import torch

SEQUENCES, LENGTH = 4, 64


def sequences() -> torch.Tensor:
    """SEQUENCES × LENGTH token ids, the same in every process."""
    return torch.randint(10, 300, (SEQUENCES, LENGTH), generator=torch.Generator().manual_seed(1))


def compare(got: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    """Metrics of logits `got` against `expected` (both sequences × positions × vocabulary)."""
    got, expected = got.float(), expected.float()
    kl = (
        torch.nn.functional.kl_div(
            got.log_softmax(-1), expected.log_softmax(-1), log_target=True, reduction="batchmean"
        )
        / got.shape[1]
    )
    return {
        "rel_logit_error": float((got - expected).norm() / expected.norm()),
        "top1_agreement": float((got.argmax(-1) == expected.argmax(-1)).float().mean()),
        "kl_per_token": float(kl),
    }
