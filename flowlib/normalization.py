r"""Normalization layers as bijections: :class:`BatchNormFlow`, :class:`ActNorm`.

Batch normalization (Ioffe & Szegedy, 2015) is an affine map per feature, so it is invertible
with a diagonal Jacobian; RealNVP (Dinh et al., 2017) uses it between couplings to keep the
activations of a deep flow well scaled.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bijection import Bijection, check_input

__all__ = ["BatchNormFlow", "ActNorm"]



def _reduce_dims(v: Tensor, features: int, name: str) -> tuple[int, ...]:
    """Check a ``[B, C]`` or ``[B, C, H, W]`` input with ``features`` channels and return the
    dimensions that per-channel statistics reduce over."""
    check_input(v, ndim=(2, 4), name=name, finite=False)
    if v.shape[1] != features:
        raise ValueError(f"{name}: expected {features} features in dimension 1, "
                         f"got shape {tuple(v.shape)}")
    return (0,) if v.dim() == 2 else (0, 2, 3)


def _per_channel(p: Tensor, v: Tensor) -> Tensor:
    """A per-channel vector shaped to broadcast against ``v`` (vectors or images)."""
    return p if v.dim() == 2 else p[:, None, None]


class BatchNormFlow(Bijection):
    r"""Batch normalization as a flow layer, normalizing per feature (dimension 1: the
    coordinates of ``[B, D]``, the channels of ``[B, C, H, W]``, statistics over the batch and the
    pixels).

    With mean :math:`\mu`, variance :math:`\sigma^2`, learned :math:`\gamma = e^{\log\gamma} > 0`
    and :math:`\beta`:

    * inverse (normalizing): :math:`z = \gamma \odot \dfrac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta`
    * forward (generative): :math:`x = \mu + \sqrt{\sigma^2 + \epsilon} \odot \dfrac{z - \beta}{\gamma}`
    * log-det (inverse): :math:`\sum_{\text{features}} \big(\log\gamma - \tfrac12\log(\sigma^2 + \epsilon)\big)`,
      times :math:`H W` for images; the forward's is its negative.

    **Which statistics.** In training mode, ``inverse`` (the direction ``log_prob`` runs) uses the
    statistics of the current batch (biased variance), back-propagates through them, and updates
    the running averages ``running_mean``/``running_var`` with ``momentum``. The log-det above then
    treats :math:`\mu, \sigma^2` as constants, as the RealNVP and MAF papers do: it is the log-det
    of the map applied to each sample, not of the whole batch map (whose Jacobian also has the
    small cross-sample terms of :math:`\partial\mu/\partial x`). In evaluation mode, and in
    ``forward`` in either mode (a batch of latents says nothing about the data's statistics), the
    running averages are used, so the layer is one fixed affine bijection, the same for every
    batch. Call ``flow.eval()`` before evaluating likelihoods or sampling: ``fit`` and
    ``flowlib.metrics`` do.

    The scale is stored as :math:`\log\gamma`, so it stays positive; :math:`\epsilon` keeps the
    division finite.
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"BatchNormFlow: momentum must lie in (0, 1], got {momentum}")
        self.features = int(features)
        self.momentum, self.eps = float(momentum), float(eps)
        self.log_gamma = nn.Parameter(torch.zeros(self.features))
        self.beta = nn.Parameter(torch.zeros(self.features))
        self.register_buffer("running_mean", torch.zeros(self.features))
        self.register_buffer("running_var", torch.ones(self.features))

    def _check(self, v: Tensor, name: str) -> tuple[int, ...]:
        return _reduce_dims(v, self.features, name)

    _view = staticmethod(_per_channel)

    def _ladj(self, var: Tensor, v: Tensor) -> Tensor:
        """log-det of the normalizing direction, per sample."""
        pixels = 1 if v.dim() == 2 else v.shape[2] * v.shape[3]
        total = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * pixels
        return total.expand(v.shape[0])

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and biased variance per feature of a batch, as used in training mode."""
        dims = self._check(x, "BatchNormFlow")
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        return mean, var

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        dims = self._check(x, "BatchNormFlow.inverse")
        if self.training:
            if x.numel() // x.shape[1] < 2:
                raise ValueError("BatchNormFlow: training mode needs at least 2 values per "
                                 f"feature to estimate a variance, got shape {tuple(x.shape)}")
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = torch.exp(self.log_gamma) * torch.rsqrt(var + self.eps)
        z = (x - self._view(mean, x)) * self._view(scale, x) + self._view(self.beta, x)
        return z, self._ladj(var, x)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z, "BatchNormFlow")
        mean, var = self.running_mean, self.running_var
        scale = torch.sqrt(var + self.eps) * torch.exp(-self.log_gamma)
        x = (z - self._view(self.beta, z)) * self._view(scale, z) + self._view(mean, z)
        return x, -self._ladj(var, z)

    def extra_repr(self) -> str:
        return f"features={self.features}, momentum={self.momentum}, eps={self.eps}"


class ActNorm(Bijection):
    r"""Glow's activation normalization (Kingma & Dhariwal, 2018): a per-feature affine map
    (dimension 1: coordinates of ``[B, D]``, channels of ``[B, C, H, W]``) whose parameters are
    *initialised from data* and then trained like any others.

    With learned :math:`b` and :math:`s = e^{\log s} > 0` (one of each per feature), and
    :math:`h w` the number of pixels (1 for vectors):

    * forward (generative): :math:`x = s \odot z + b`
    * inverse (normalizing): :math:`z = (x - b) / s`
    * log-det (forward): :math:`h\,w \sum_c \log s_c`; the inverse's is its negative.

    **Data-dependent initialisation.** The first call of ``inverse`` in training mode (the
    direction ``log_prob`` runs, so the first training batch) sets :math:`b` to the per-feature
    mean and :math:`\log s` to the log of the per-feature standard deviation of that batch
    (statistics over the batch and the pixels), so that the normalized batch has zero mean and
    unit variance per feature. Unlike :class:`BatchNormFlow`, nothing depends on the batch after
    that: the layer is one fixed affine map, the same in training and evaluation, and works with
    batches of one. The flag is the buffer ``initialized``, saved in the ``state_dict``, so a
    loaded model does not re-initialize. Call :meth:`initialize` to do it by hand.

    The scale is stored as its logarithm, so it stays positive; ``eps`` keeps the logarithm of a
    constant feature finite. (The paper writes the normalizing map :math:`y = s' \odot x + b'`:
    :math:`s' = 1/s`, :math:`b' = -b/s`.)

    Example:
        >>> an = ActNorm(3)
        >>> z, ladj = an.inverse(5 + 2 * torch.randn(100, 3))   # initializes: z ~ zero mean, unit var
    """

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.features = int(features)
        self.eps = float(eps)
        self.loc = nn.Parameter(torch.zeros(self.features))
        self.log_scale = nn.Parameter(torch.zeros(self.features))
        self.register_buffer("initialized", torch.tensor(False))

    def _check(self, v: Tensor, name: str) -> tuple[int, ...]:
        return _reduce_dims(v, self.features, name)

    _view = staticmethod(_per_channel)

    def _ladj(self, v: Tensor) -> Tensor:
        pixels = 1 if v.dim() == 2 else v.shape[2] * v.shape[3]
        return (self.log_scale.sum() * pixels).expand(v.shape[0])

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters so that ``inverse(x)`` has zero mean and unit variance per feature."""
        dims = self._check(x, "ActNorm.initialize")
        if x.numel() // x.shape[1] < 2:
            raise ValueError("ActNorm: the data-dependent initialization needs at least 2 values "
                             f"per feature, got shape {tuple(x.shape)}")
        var, mean = torch.var_mean(x.detach(), dim=dims, correction=0)
        self.loc.copy_(mean)
        self.log_scale.copy_(0.5 * torch.log(var + self.eps))
        self.initialized.fill_(True)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, "ActNorm.inverse")
        if self.training and not bool(self.initialized):
            self.initialize(x)
        z = (x - self._view(self.loc, x)) * self._view(torch.exp(-self.log_scale), x)
        return z, -self._ladj(x)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z, "ActNorm")
        x = z * self._view(torch.exp(self.log_scale), z) + self._view(self.loc, z)
        return x, self._ladj(z)

    def extra_repr(self) -> str:
        return f"features={self.features}, initialized={bool(self.initialized)}"
