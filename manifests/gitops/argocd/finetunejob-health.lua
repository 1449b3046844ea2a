-- Argo CD health of a FineTuneJob (finetune.dev), from the status the operator
-- writes: kstatus conditions (Ready, Stalled) stamped with observedGeneration,
-- and the phase.
--   Progressing  the operator has not yet seen the current spec, or a run is underway
--   Suspended    the benchmark passed; promotion waits for the approval annotation
--   Degraded     Stalled=True, or the run ended Failed or Rejected (the SLA gate)
--   Healthy      Ready=True for the current generation (the model was promoted)
local health = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil then
  return health
end

local function condition(kind)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  health.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return health
end

local phase = obj.status.phase
local ready = condition("Ready")
local stalled = condition("Stalled")
-- A condition set for an older generation says nothing about the current spec.
local function current(c)
  return c ~= nil and (generation == nil or c.observedGeneration == nil
    or c.observedGeneration >= generation)
end
local function text(c)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return nil
end

if (current(stalled) and stalled.status == "True") or phase == "Failed" or phase == "Rejected" then
  health.status = "Degraded"
  health.message = (current(stalled) and text(stalled)) or obj.status.message or phase
  return health
end
if phase == "AwaitingApproval" then
  health.status = "Suspended"
  health.message = obj.status.message or "Waiting for the finetune.dev/approve annotation"
  return health
end
if current(ready) and ready.status == "True" then
  health.status = "Healthy"
  health.message = text(ready) or "Promoted"
  return health
end
health.message = text(ready) or phase or health.message
return health
