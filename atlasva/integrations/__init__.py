"""Adapters that plug atlasva's envs, formats, memory and estimators into engines users already run
(``verl``). Each adapter imports its engine lazily; nothing here is imported by the core package."""
