"""The bundled HTTP plugin: an OpenAI-compatible server over ``AsyncEngine``.

``llmserve.http.plugin`` registers it through the core's hooks like any third-party plugin:
``llmserve_cli_commands`` contributes ``llmserve serve`` and ``llmserve_http_routes`` the
routes (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, ``/tokenize``,
``/detokenize``, ``/health``, ``/version``, ``/metrics``). Nothing here is imported until a
hook asks for it.
"""
