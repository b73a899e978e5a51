-- ArgoCD health for herald.dev/DeliveryTier.
-- Reads only what the operator writes to status (observedGeneration, phase,
-- conditions, canary) and never fails on a missing field. Worst wins:
-- Degraded, then Suspended (a canary waiting at its manual gate or paused
-- by hand), then
-- Progressing, then Healthy. Plain Lua 5.1, as ArgoCD's interpreter runs it.
local hs = {}

local function condition(status, kind)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function explain(c, fallback)
  if c ~= nil and type(c.message) == "string" and c.message ~= "" then
    return c.message
  end
  if c ~= nil and type(c.reason) == "string" and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local function canary_text(canary)
  if type(canary.summary) == "string" and canary.summary ~= "" then
    return canary.summary
  end
  return tostring(canary.weight or "?") .. "% " .. string.lower(tostring(canary.verdict or "in progress"))
end

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

local ready = condition(status, "Ready")
local degraded = condition(status, "Degraded")
local dependency = condition(status, "DependencyDegraded")
local analysis = condition(status, "CanaryAnalysis")
local canary = status.canary
if type(canary) ~= "table" then
  canary = nil
end

if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "Failed: " .. explain(degraded, explain(ready, "the tier cannot run"))
  return hs
end

if canary ~= nil and canary.verdict == "Aborted" then
  hs.status = "Degraded"
  hs.message = "Canary aborted (" .. canary_text(canary) .. "): " .. explain(analysis, "rolled back to stable")
  return hs
end

if is_true(degraded) then
  hs.status = "Degraded"
  hs.message = explain(degraded, "Degraded")
  return hs
end

if is_true(dependency) then
  hs.status = "Degraded"
  hs.message = "Dependency degraded: " .. explain(dependency, "a shared dependency is down")
  return hs
end

if status.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = explain(ready, "phase Degraded")
  return hs
end

if canary ~= nil and canary.verdict == "Paused" then
  hs.status = "Suspended"
  local progressing = condition(status, "Progressing")
  if progressing ~= nil and progressing.reason == "ManualPause" then
    hs.message = "Canary " .. canary_text(canary) .. " by hand: `herald rollout resume` continues it"
  else
    hs.message = "Canary " .. canary_text(canary) .. ": waiting at the manual gate for `herald rollout promote`"
  end
  return hs
end

if canary ~= nil and canary.verdict ~= "Promoted" then
  hs.status = "Progressing"
  hs.message = "Canary " .. canary_text(canary)
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = explain(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = explain(ready, "Waiting for the tier to become ready")
return hs
