"""lmforge's HTTP service: FastAPI over ``lm``'s pipeline (generation, streaming, scoring).

``service.app.create_app(settings)`` builds the app; ``lmforge serve`` runs it with uvicorn.
It knows nothing of training and adds no model logic: it maps HTTP to ``lm`` calls, limits to
4xx errors, and schedules concurrent requests onto one decode batch per model.
"""
