"""unprompt's entry points: the command line (`api.cli`) and the HTTP service (`api.app`)."""
