-- GET of a uniformly random key among k0 .. k<DODO_KEYS-1>.
dofile("common.lua")
local gets
function init(args)
  seed()
  gets = build_gets()
end
function request()
  return gets[math.random(KEYS)]
end
