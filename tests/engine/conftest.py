from assist_fixtures import isolated_env, random_model_dir, sample_repo  # noqa: F401  (fixtures)
