"""The Slicer module's own code, one file per concern (Python 3.9; imported by ../KneePipeline.py).

parameters.py  the parameter node (typed fields bound to the panel) and its one-time GUI connection
export.py      a segmentation node -> a label map with the canonical tissue values
install.py     the pipeline's Python environment: uv into Slicer's Python, Set up and Check as jobs
logic.py       parameters -> RunOptions -> the background run -> the scene (through KneePipelineLib.slicer_io)
widget.py      the panel: buttons, the poll timer, the log, the results
selftest.py    the self-test Slicer runs (ctest, "Reload and Test")

A folder, not files beside KneePipeline.py: Slicer loads every .py directly in a module folder as a module.
"""
