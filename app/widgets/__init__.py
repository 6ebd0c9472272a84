"""Page furniture in Streamlit: ``ui`` (navigation, sidebar, talk mode, showing figures and tables),
``image_picker`` (choosing an image for the pages that look inside the model) and ``runs_view`` (the Runs
page's sections)."""
