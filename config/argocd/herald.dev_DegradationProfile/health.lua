-- ArgoCD health for herald.dev/DegradationProfile.
-- A policy has no pods: it is Healthy once the operator has accepted the
-- current generation, Degraded when it rejected it (the condition message
-- says why), Progressing until then. Plain Lua 5.1, as ArgoCD runs it.
local hs = {}

local status = obj.status
if type(status) ~= "table" then
  hs.status = "Progressing"
  hs.message = "Waiting for the herald operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the herald operator to observe generation " .. tostring(generation)
  if observed ~= nil then
    hs.message = hs.message .. " (status is for generation " .. tostring(observed) .. ")"
  end
  return hs
end

local accepted = nil
if type(status.conditions) == "table" then
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == "Accepted" then
      accepted = c
    end
  end
end

local function explain(c, fallback)
  if type(c.message) == "string" and c.message ~= "" then
    return c.message
  end
  if type(c.reason) == "string" and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if accepted == nil or (accepted.status ~= "True" and accepted.status ~= "False") then
  hs.status = "Progressing"
  hs.message = "Waiting for the herald operator to accept the policy"
  if accepted ~= nil then
    hs.message = hs.message .. ": " .. explain(accepted, "status " .. tostring(accepted.status))
  end
  return hs
end

if accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = "Rejected: " .. explain(accepted, "the policy is invalid")
  return hs
end

hs.status = "Healthy"
hs.message = explain(accepted, "Accepted")
return hs
