"""T2 mapping: multi-echo spin echo (MESE) fits, the qDESS two-echo estimator, regional and
deep/superficial cartilage T2, T2 projected onto bone surfaces (REFERENCE §6).

Public API::

    load_echoes(paths, echo_times_ms=None) -> MultiEcho
    fit_mese(echoes, drop_first_echo=True, refine=True, r2_min=0.7, t2_range_ms=(0, 100), noise_sigma=None) -> T2Maps
    qdess_params(source, tr_ms=..., te_ms=..., flip_deg=..., tg_us=..., gl_area=...) -> QdessParams
    qdess_t2(s1, s2, params) -> T2Maps
    regional_t2(t2, regions, bone_meshes=None) -> (rows, {bone: t2_ms point array})
    resample_to(t2, target) -> T2Maps
"""
from .types import MultiEcho, QdessParams, T2Maps
from .echoes import load_echoes
from .mese import estimate_noise_sigma, fit_mese
from .qdess import qdess_params, qdess_t2, qdess_t2_values
from .regional import cartilage_layers, project_to_surface, regional_t2
from .resample import resample_to

__all__ = ["MultiEcho", "T2Maps", "QdessParams", "load_echoes", "fit_mese", "estimate_noise_sigma",
           "qdess_params", "qdess_t2", "qdess_t2_values", "regional_t2", "cartilage_layers",
           "project_to_surface", "resample_to"]
