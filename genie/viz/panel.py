"""The control panel: widgets for the settings a person wants to vary, a Run button and an
output area (live); the settings as a table (static: papermill, nbval, a script)."""
from __future__ import annotations

import html
import time
import traceback
from typing import Callable, Optional

from .display import _display, _inside_panel, live_frontend, show_text
from .figures import table


class RunPanel:
    """Controls for the settings a person wants to vary, a Run button and an output area.

    ``settings``: ``{name: default}``; ``choices``: ``{name: list of options}`` (a dropdown) or
    ``(min, max)`` / ``(min, max, step)`` (a slider); bools become check boxes. ``run(values)``
    is called with the current values when Run is pressed; whatever it displays (monitors,
    tables) appears in the panel's output area. A status line, written by the kernel whenever a
    control changes, shows the settings the kernel has. In static mode (papermill, nbval) the
    panel shows its settings as a table instead, and ``values()`` returns the defaults.
    """

    def __init__(self, run: Callable[[dict], object], settings: dict, choices: Optional[dict] = None,
                 title: str = "Settings", live: Optional[bool] = None):
        self.run_fn = run
        self.defaults = dict(settings)
        self.choices = dict(choices or {})
        self.title = title
        self.live = live_frontend(live)
        self.widgets: dict = {}
        self.runs = 0
        if self.live:
            self._build()
        else:
            table([{"setting": k, "value": v} for k, v in self.defaults.items()],
                  title=f"{title} (controls need a live Jupyter frontend; these are the notebook's parameters)")

    def _build(self) -> None:
        import ipywidgets as w

        style = {"description_width": "120px"}
        for name, value in self.defaults.items():
            spec = self.choices.get(name)
            label = name.replace("_", " ")
            if isinstance(value, bool):
                widget = w.Checkbox(value=value, description=label, style=style, indent=False)
            elif isinstance(spec, list):
                widget = w.Dropdown(options=list(spec), value=value, description=label, style=style)
            elif isinstance(spec, tuple) and isinstance(value, int):
                lo, hi = spec[0], spec[1]
                step = spec[2] if len(spec) > 2 else 1
                widget = w.IntSlider(value=value, min=lo, max=hi, step=step, description=label, style=style,
                                     continuous_update=False)
            elif isinstance(value, int):
                widget = w.BoundedIntText(value=value, min=1, max=10**7, description=label, style=style)
            elif isinstance(value, float):
                widget = w.FloatText(value=value, description=label, style=style)
            else:
                widget = w.Text(value=str(value), description=label, style=style)
            widget.observe(self._changed, names="value")
            self.widgets[name] = widget
        self.button = w.Button(description="Run", button_style="primary", icon="play",
                               tooltip="run with these settings (output below)")
        self.button.on_click(self._clicked)
        self.status = w.HTML(value=self._status_text())
        self.status.add_class("genie-kernel-settings")
        self.output = w.Output()
        header = w.HTML(value=f"<b>{html.escape(self.title)}</b>")
        self.box = w.VBox([header, *self.widgets.values(), w.HBox([self.button]), self.status, self.output])
        self.box.add_class("genie-run-panel")
        _display(self.box, new=False)

    def values(self) -> dict:
        """The current settings (the defaults in static mode)."""
        if not self.live:
            return dict(self.defaults)
        return {k: wdg.value for k, wdg in self.widgets.items()}

    def _status_text(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in self.values().items())
        return f"<code>kernel settings: {html.escape(items)}</code>"

    def _changed(self, change) -> None:
        self.status.value = self._status_text()

    def _clicked(self, _button=None) -> None:
        self.button.disabled = True
        self.button.description = "Running..."
        self.output.clear_output()
        t0 = time.perf_counter()
        # views made by the callback are shown in self.output: they stay widgets to the end
        with self.output, _inside_panel():
            try:
                self.run_fn(self.values())
                self.runs += 1
                show_text(f"run {self.runs} finished in {time.perf_counter() - t0:.1f} s")
            except Exception:
                show_text("the run failed:\n" + traceback.format_exc())
            finally:
                self.button.disabled = False
                self.button.description = "Run"

    def click(self) -> None:
        """Press Run from code (tests; static mode runs with the defaults)."""
        if self.live:
            self._clicked()
        else:
            self.run_fn(self.values())
            self.runs += 1
