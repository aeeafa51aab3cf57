"""searchmorph_lite: SearchMorph (multi-scale correlation iterative registration) as a small PyTorch library."""

from .affine import AffineResult, affine_register
from .base import RegistrationModel, RegistrationResult
from .baselines import VoxelMorph, VoxelMorphConfig
from .checkpoint import default_device, load_checkpoint, read_checkpoint, save_checkpoint
from .correlation import (
    AllPairsLookup,
    OnTheFlyLookup,
    WarpedFeaturesLookup,
    correlation_pyramid,
    cost_volume,
    diamond_offsets,
    search_features,
    search_pyramid,
)
from .encoders import ContextEncoder, FeatureEncoder, SharedEncoder, UNet, UNetTrunk
from .inference import normalize_intensity, register
from .iterator import ConvGRU, DeformationFieldIterator
from .losses import (
    folding_barrier,
    grad_l2_loss,
    lncc_loss,
    local_ncc,
    mse_loss,
    registration_loss,
    sequence_loss,
)
from .metrics import dice, folding_ratio, jacobian_determinant
from .model import SearchMorph, SearchMorphConfig, zeroed_input
from .pipeline import Registration, register_images, write_itk_displacement
from .pretrained import available_pretrained, load_pretrained
from .registry import build_model
from .sampling import bilinear_sample, sample_grid, sample_points
from .transform import SpatialTransformer, identity_grid, integrate_velocity, upsample_flow, warp

__version__ = "0.1.0"

__all__ = [
    "AffineResult",
    "Registration",
    "affine_register",
    "register_images",
    "write_itk_displacement",
    "AllPairsLookup",
    "OnTheFlyLookup",
    "RegistrationModel",
    "SharedEncoder",
    "WarpedFeaturesLookup",
    "sample_grid",
    "sample_points",
    "ContextEncoder",
    "ConvGRU",
    "DeformationFieldIterator",
    "FeatureEncoder",
    "RegistrationResult",
    "SearchMorph",
    "SearchMorphConfig",
    "SpatialTransformer",
    "UNet",
    "UNetTrunk",
    "VoxelMorph",
    "VoxelMorphConfig",
    "available_pretrained",
    "bilinear_sample",
    "build_model",
    "correlation_pyramid",
    "cost_volume",
    "default_device",
    "dice",
    "diamond_offsets",
    "folding_ratio",
    "folding_barrier",
    "grad_l2_loss",
    "identity_grid",
    "integrate_velocity",
    "jacobian_determinant",
    "lncc_loss",
    "load_checkpoint",
    "load_pretrained",
    "local_ncc",
    "mse_loss",
    "normalize_intensity",
    "read_checkpoint",
    "register",
    "registration_loss",
    "save_checkpoint",
    "search_features",
    "search_pyramid",
    "sequence_loss",
    "upsample_flow",
    "warp",
    "zeroed_input",
]
