"""Versioned prompt templates: `templates/<name>/v<N>.yaml`, resolved by `name@N`."""

from chared_flows.prompts.store import TemplateRef, TemplateStore
from chared_flows.prompts.template import PromptTemplateSpec, template_variables

__all__ = ["PromptTemplateSpec", "TemplateRef", "TemplateStore", "template_variables"]
