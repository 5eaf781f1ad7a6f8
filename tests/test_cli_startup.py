"""What the command costs before and after its work: matplotlib is never imported at start-up,
and with figures on it is imported in the background while the command evaluates."""

import subprocess
import sys

from layerlmc.cli.options import preload_plots


def test_the_command_starts_without_matplotlib():
    code = "import sys, layerlmc.cli.main; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_preload_imports_the_plotting_module_in_the_background():
    thread = preload_plots("layerlmc.plots.barriers")
    assert thread.daemon
    thread.join(timeout=60)
    assert not thread.is_alive() and "layerlmc.plots.barriers" in sys.modules
    # a module that cannot be imported is left to the drawing step to report
    failing = preload_plots("layerlmc.no_such_module")
    failing.join(timeout=10)
    assert not failing.is_alive()
