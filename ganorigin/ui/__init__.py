"""The web page's parts: each tab builds its components and events inside the page's Blocks.

Only ``app.py`` and this package import Gradio; they hold no model logic.
"""
