-- PUT of the ~100-byte JSON value ($DODO_BODY) to a uniformly random key among
-- k0 .. k<DODO_KEYS-1> (after the preload these are overwrites).
dofile("common.lua")
local puts
function init(args)
  seed()
  puts = build_puts()
end
function request()
  return puts[math.random(KEYS)]
end
