"""Conversations: the chat service (history, context, persistence), the providers that answer (the local
engine or any OpenAI-compatible server), and the provider configs."""
