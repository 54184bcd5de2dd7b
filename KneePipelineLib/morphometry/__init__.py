"""Morphometry: meshes, cartilage thickness and sub-regions from a canonical knee label map."""
from .analysis import MeshSettings, MorphometryResult, RegionStats, analyze_labels
from .mesh import mesh_from_mask, read_mesh, vertex_areas, write_mesh
from .raycast import thickness_on_surface

__all__ = ["analyze_labels", "MorphometryResult", "RegionStats", "MeshSettings", "mesh_from_mask",
           "thickness_on_surface", "write_mesh", "read_mesh", "vertex_areas"]
