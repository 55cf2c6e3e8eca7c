"""flowlib: the normalizing-flow library of the Flows course.

Direction follows the lectures: ``forward`` is generative (z -> x), ``inverse`` normalizing
(x -> z); both return ``(value, log|det J|)`` with one log-determinant per sample.

One name per idea across layers and factories: ``features`` is the size of a vector event
``[B, D]`` (never ``dim``, which in PyTorch names an axis), ``shape`` an event shape (an int or
``(C, H, W)``), ``layers`` the number of layers, ``hidden`` the conditioner's widths, ``context``
the size of a conditioning vector, ``log_scale_bound`` the soft clamp of an affine log-scale,
``order`` a MADE ordering (``"natural"``, ``"reversed"``, ``"random"`` or a permutation).
``tests/test_api.py`` holds the library to it.
"""

from . import data, metrics, testing, train, viz
from .bijection import Bijection, Compose, Inverse, check_input, soft_clamp, sum_except_batch
from .distributions import BaseDistribution, DiagonalGaussian, Flow, StandardLogistic, StandardNormal
from .elementwise import ElementwiseAffine, Exp, LeakyReLU, Sigmoid, SinhArcsinh, Tanh
from .linear import Linear, Permutation
from .train import budget, device, fit, seed
from .autoregressive import MADE, MaskedAutoregressive
from .coupling import (AdditiveCoupling, AffineCoupling, Coupling, Rescale, alternating_mask,
                       channel_mask, checkerboard_mask, half_mask)
from .maps import AdditiveMap, AffineMap, ElementwiseMap
from .normalization import ActNorm, BatchNormFlow
from .invconv import GlowStep, InvConv1x1
from .preprocess import LogitPreprocess
from .reshape import FactorOut, Squeeze
from .spline import SplineAutoregressive, SplineCoupling, SplineMap, rq_spline
from . import spline
from . import autoregressive, binary, models
from . import coupling, normalization, preprocess, reshape
from . import invconv
from . import activations, maps, sequential
from . import distill
from .distill import kl_estimate

__version__ = "0.1.0"

__all__ = [
    "Bijection", "Compose", "Inverse", "check_input", "soft_clamp", "sum_except_batch",
    "BaseDistribution", "StandardNormal", "DiagonalGaussian", "StandardLogistic", "Flow",
    "ElementwiseAffine", "Exp", "Sigmoid", "Tanh", "LeakyReLU", "SinhArcsinh",
    "Linear", "Permutation",
    "device", "budget", "seed", "fit",
    "data", "metrics", "testing", "train", "viz",
    "MADE", "MaskedAutoregressive", "autoregressive", "binary", "models",
    "AdditiveCoupling", "AffineCoupling", "Rescale", "half_mask", "alternating_mask",
    "checkerboard_mask", "channel_mask", "BatchNormFlow", "LogitPreprocess", "Squeeze", "FactorOut",
    "coupling", "normalization", "preprocess", "reshape",
    "ActNorm", "InvConv1x1", "GlowStep", "invconv",
    "distill", "kl_estimate",
    "SplineAutoregressive", "SplineCoupling", "rq_spline", "spline",
    "Coupling", "ElementwiseMap", "AdditiveMap", "AffineMap", "SplineMap",
    "activations", "maps", "sequential",
]

# beyond the lectures (chapter 8): residual flows and continuous-time flows
from . import continuous, images, pixelcnn, residual
from .continuous import ContinuousFlow, VelocityField, fit_flow_matching, flow_matching_loss
from .residual import ResidualBlock, SpectralLinear

__all__ += ["residual", "continuous", "images", "pixelcnn", "ResidualBlock", "SpectralLinear", "ContinuousFlow",
            "VelocityField", "flow_matching_loss", "fit_flow_matching"]
