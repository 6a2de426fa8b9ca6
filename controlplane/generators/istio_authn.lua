-- istio_authn for the upstream Envoy (meshd, controlplane/generators/authn.py).
--
-- Istio's proxy build has a C++ filter named istio_authn that turns what the JWT filter
-- verified into dynamic metadata under the namespace "istio_authn". Upstream Envoy has
-- no such filter; this script does the same from the metadata envoy.filters.http.jwt_authn
-- writes under "payload" (payload_in_metadata), with the keys and shapes of Istio's
-- filter (istio/proxy authn_utils.cc, read not copied):
--   request.auth.principal  "<iss>/<sub>" (first word of each), when both are present
--   request.auth.audiences  the first audience
--   request.auth.presenter  the first word of azp
--   request.auth.claims     every claim as a list of strings: a string becomes its
--                           space-separated words, a list of strings stays, an object
--                           is converted the same way, recursively (so an RBAC rule
--                           can match request.auth.claims -> nested1 -> nested2);
--                           numbers, booleans and mixed lists are left out
--   request.auth.raw_claims the payload as JSON
-- Without a verified token (none was sent) nothing is set, exactly as Istio's filter.

local function is_list(t)
  local n = 0
  for k, _ in pairs(t) do
    if type(k) ~= "number" then
      return false
    end
    n = n + 1
  end
  return n > 0 and n == #t
end

local function words(s)
  local out = {}
  for w in string.gmatch(s, "[^ ]+") do
    out[#out + 1] = w
  end
  return out
end

local function string_list(t)
  local out = {}
  for i = 1, #t do
    if type(t[i]) ~= "string" then
      return nil
    end
    out[i] = t[i]
  end
  return out
end

local function has_entries(t)
  return next(t) ~= nil
end

local function claims_of(obj)
  local out = {}
  for k, v in pairs(obj) do
    if type(k) == "string" then
      local kind = type(v)
      if kind == "string" then
        local list = words(v)
        if #list > 0 then
          out[k] = list
        end
      elseif kind == "table" and is_list(v) then
        local list = string_list(v)
        if list ~= nil then
          out[k] = list
        end
      elseif kind == "table" and has_entries(v) then
        local nested = claims_of(v)
        if has_entries(nested) then
          out[k] = nested
        end
      end
    end
  end
  return out
end

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function json_string(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c)
    return escapes[c] or string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

local function json(v)
  local kind = type(v)
  if kind == "string" then
    return json_string(v)
  elseif kind == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      return string.format("%d", v)
    end
    return string.format("%.17g", v)
  elseif kind == "boolean" then
    return tostring(v)
  elseif kind == "table" then
    local parts = {}
    if is_list(v) then
      for i = 1, #v do
        parts[i] = json(v[i])
      end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k, _ in pairs(v) do
      keys[#keys + 1] = tostring(k)
    end
    table.sort(keys)
    for i, k in ipairs(keys) do
      parts[i] = json_string(k) .. ":" .. json(v[k])
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "null"
end

function envoy_on_request(handle)
  local md = handle:streamInfo():dynamicMetadata()
  local jwt = md:get("envoy.filters.http.jwt_authn")
  if jwt == nil or type(jwt["payload"]) ~= "table" then
    return
  end
  local payload = jwt["payload"]
  local claims = claims_of(payload)
  if claims["iss"] ~= nil and claims["sub"] ~= nil then
    md:set("istio_authn", "request.auth.principal", claims["iss"][1] .. "/" .. claims["sub"][1])
  end
  if claims["aud"] ~= nil and claims["aud"][1] ~= nil then
    md:set("istio_authn", "request.auth.audiences", claims["aud"][1])
  end
  if claims["azp"] ~= nil and claims["azp"][1] ~= nil then
    md:set("istio_authn", "request.auth.presenter", claims["azp"][1])
  end
  if has_entries(claims) then
    md:set("istio_authn", "request.auth.claims", claims)
  end
  md:set("istio_authn", "request.auth.raw_claims", json(payload))
end
