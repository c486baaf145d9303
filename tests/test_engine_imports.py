"""The engine never imports UI libraries: it runs in terminals, CI and training processes."""

from conftest import run_python


def test_engine_imports_no_ui_library():
    result = run_python("""
        import sys
        import mlwidgets as mw
        from mlwidgets import cli, demo, session, trainer, callbacks, classifier, datasets, follow
        ui = [m for m in ("ipywidgets", "plotly", "anywidget", "IPython.display")
              if m in sys.modules]
        print(ui)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
