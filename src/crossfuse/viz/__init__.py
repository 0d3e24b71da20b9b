"""Visual output: figures, the HTML lab report and the attention explorer.

Not radiology reports: those are written by `crossfuse.lab.report_generation`.
"""
