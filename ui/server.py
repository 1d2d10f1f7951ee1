"""Start the Streamlit server for app.py (what `python -m core app` runs).

pages/ holds st.navigation pages. Streamlit still treats a `pages/` folder beside the entry script as
legacy multipage mode until some run of app.py calls st.navigation, so the first request of a new
server for /models would run pages/models.py alone: no router, no language, no sidebar. Marking
the app as navigation-routed before the server starts makes every first request go through app.py.
"""

import os
import sys

from streamlit.runtime.pages_manager import PagesManager
from streamlit.web import cli

if __name__ == "__main__":
    PagesManager.uses_pages_directory = False
    # Client addresses decide who is admin: trust X-Forwarded-For from this machine only (uvicorn's default).
    os.environ.pop("FORWARDED_ALLOW_IPS", None)
    sys.exit(cli.main())
