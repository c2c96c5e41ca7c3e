"""nnspec in the browser: the self-contained HTML view (`page`) and the live playground (`app`, needs the `web`
extra: Starlette and uvicorn). Imports no torch and runs no code from a spec."""
