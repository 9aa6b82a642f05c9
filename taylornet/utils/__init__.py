"""Helpers shared by the commands (demo, benchmark, experiments): timing, progress bars, plots and
result files. Nothing in the library's core imports them."""
