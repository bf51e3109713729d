"""Figures and widgets for the notebooks: image grids, live loss curves and per-block error charts
fed from genie's events, progress bars, result tables, a control panel with a Run button, the
figures and budget slider of mixed precision, and the kernel and latency charts of deployment.

Two display modes, picked by :func:`live_frontend`:

* **live** (a person in JupyterLab, Notebook or VS Code): plotly ``FigureWidget`` traces, image
  grids and ``ipywidgets`` progress bars update in place while a step runs; when the step ends
  each live view is replaced by its final static figure, so a saved notebook keeps its plots;
* **static** (papermill, nbval, a script): nothing is redrawn while a step runs; each view shows
  its final figure once at the end, and control panels show their settings as a table.

matplotlib, plotly, ipywidgets and IPython are imported inside the functions that use them:
``import genie.viz`` needs only torch and numpy. Outside IPython, figures are not displayed
(their ``figure()`` methods still return them) and summaries are printed.

Units on axes: iterations are optimisation steps; the BNS loss is a dimensionless sum of squared
differences of statistics (:mod:`genie.distill.bns`); reconstruction errors are squared output
differences in the units of the activations (:data:`ERROR_LABEL`); accuracy in percent; time in
seconds.

Modules: :mod:`~genie.viz.display` (display mode, showing figures and text),
:mod:`~genie.viz.figures` (static figures and tables), :mod:`~genie.viz.views` (live views and
their base class), :mod:`~genie.viz.monitors` (the monitors of distillation, reconstruction,
a pipeline run and a sweep), :mod:`~genie.viz.panel` (the control panel), :mod:`~genie.viz.mixed` (the
figures and the budget slider of mixed precision), :mod:`~genie.viz.deploy` (onnxruntime's
kernels and latency per exported file), :mod:`~genie.viz.notebook` (notebook set-up).
Everything public is importable from ``genie.viz`` itself.
"""
from ..distill.schedule import snapshot_schedule
from .deploy import kernel_rows, kernels_figure, latency_figure, latency_rows, latency_table
from .display import LIVE_ENV, PLOTLY_MIME, chain, live_frontend, show, show_text
from .figures import (
    ERROR_LABEL,
    bar_figure,
    heatmap_figure,
    histograms_figure,
    image_grid,
    image_grids,
    line_figure,
    maps_figure,
    mosaic,
    swing_windows_figure,
    table,
    table_text,
    to_rgb,
)
from .mixed import (
    BudgetSlider,
    accuracy_memory_figure,
    bits_figure,
    budget_explorer,
    budget_slider,
    pareto_figure,
    sensitivity_figure,
    sensitivity_label,
)
from .monitors import DistillMonitor, PipelineMonitor, ReconMonitor, SweepMonitor
from .notebook import notebook_setup, picker
from .panel import RunPanel
from .views import BlockErrorChart, ImageGridView, LiveLines, Progress

__all__ = [
    "BlockErrorChart",
    "BudgetSlider",
    "DistillMonitor",
    "ERROR_LABEL",
    "ImageGridView",
    "LIVE_ENV",
    "LiveLines",
    "PLOTLY_MIME",
    "PipelineMonitor",
    "Progress",
    "ReconMonitor",
    "RunPanel",
    "SweepMonitor",
    "accuracy_memory_figure",
    "bar_figure",
    "bits_figure",
    "budget_explorer",
    "budget_slider",
    "chain",
    "heatmap_figure",
    "histograms_figure",
    "image_grid",
    "image_grids",
    "kernel_rows",
    "kernels_figure",
    "latency_figure",
    "latency_rows",
    "latency_table",
    "line_figure",
    "live_frontend",
    "maps_figure",
    "mosaic",
    "notebook_setup",
    "pareto_figure",
    "picker",
    "sensitivity_figure",
    "sensitivity_label",
    "show",
    "show_text",
    "snapshot_schedule",
    "swing_windows_figure",
    "table",
    "table_text",
    "to_rgb",
]
