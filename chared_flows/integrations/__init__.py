"""Integrations with other frameworks. Each lives in its own module (import it directly:
`from chared_flows.integrations.langchain import CharEDLLM`) so an optional SDK is needed
only by whoever uses it."""
