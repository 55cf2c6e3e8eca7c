r"""Pre-processing of bounded data as a bijection: RealNVP's logit transform.

Pixel data dequantized to :math:`[0, 1)` (:func:`flowlib.data.dequantize`) lives on a bounded set,
while a flow with a Gaussian base puts mass on all of :math:`\mathbb R^D`. RealNVP (Dinh et al.,
2017) models instead :math:`y = \operatorname{logit}(\alpha + (1 - 2\alpha) x)`, which is
unbounded; the :math:`\alpha` keeps the logit away from :math:`\pm\infty` at the edges. Written as a
bijection placed last in the flow (on the data side), its log-determinant enters the likelihood,
so ``flow.log_prob(x)`` is a density on :math:`x \in [0,1)^D` itself and can be converted to bits
per dimension with :func:`flowlib.metrics.bits_per_dim`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .bijection import Bijection, check_input, sum_except_batch

__all__ = ["LogitPreprocess"]


class LogitPreprocess(Bijection):
    r"""RealNVP's logit pre-processing, the data-side layer of a flow on :math:`[0, 1]^D`.

    With :math:`\alpha \in [0, \tfrac12)` and :math:`y = \alpha + (1 - 2\alpha)\,x`:

    * inverse (normalizing, the pre-processing): :math:`z = \operatorname{logit}(y) = \log y - \log(1 - y)`
    * forward (generative, back to the data): :math:`x = (\sigma(z) - \alpha) / (1 - 2\alpha)`
    * log-det (inverse): :math:`\sum_i \log(1 - 2\alpha) - \log y_i - \log(1 - y_i)`;
      (forward): :math:`\sum_i \log\sigma(z_i) + \log\sigma(-z_i) - \log(1 - 2\alpha)
      = -\sum_i \big(\operatorname{softplus}(z_i) + \operatorname{softplus}(-z_i) + \log(1-2\alpha)\big)`.

    It is ``Sigmoid().inv`` composed with a fixed affine map. ``inverse`` accepts
    :math:`x` with :math:`0 < y < 1`, i.e. :math:`-\alpha/(1-2\alpha) < x < 1 + \alpha/(1-2\alpha)`
    (with :math:`\alpha > 0` this includes the closed interval :math:`[0, 1]`).
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"LogitPreprocess: alpha must lie in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)
        self._log_range = math.log1p(-2 * self.alpha)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, name="LogitPreprocess.inverse", finite=False)
        y = self.alpha + (1 - 2 * self.alpha) * x
        ok = (y > 0) & (y < 1)
        if not bool(ok.all()):
            lo = -self.alpha / (1 - 2 * self.alpha)
            raise ValueError(f"LogitPreprocess.inverse: input must lie in ({lo:.4g}, {1 - lo:.4g}); "
                             f"{int((~ok).sum())} value(s) do not")
        log_y, log_1my = torch.log(y), torch.log1p(-y)
        return log_y - log_1my, sum_except_batch(self._log_range - log_y - log_1my)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(z, name="LogitPreprocess", finite=False)
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        return x, -sum_except_batch(F.softplus(z) + F.softplus(-z) + self._log_range)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
