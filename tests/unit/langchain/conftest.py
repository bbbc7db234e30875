from tests.unit.langchain.lc_fakes import fake_engine  # noqa: F401  (fixture)
