-- GET of one hot key, over and over: a static request wrk builds once.
-- Key: $DODO_HOT_KEY (default k0).
wrk.method = "GET"
wrk.path = (os.getenv("DODO_PREFIX") or "/kv/k") .. (os.getenv("DODO_HOT_KEY") or "0")
