"""The benchmark grid: protections x countermeasures x victims x budgets x protected fractions, cached per
cell and resumable; reports as CSV/JSON, Markdown tables (seed 001 Tables 3, 4, 6; ISS-style) and plots."""

from .config import Cell, GridConfig, load_config, parse_config
from .grid import Grid, run_grid

__all__ = ["Cell", "GridConfig", "Grid", "load_config", "parse_config", "run_grid"]
