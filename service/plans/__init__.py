"""Where memory plans live, behind one interface (service/plans/store.py): the local file outside Kubernetes,
or the deployment's ConfigMap, whose reads are bounded and whose writes go through a background publisher."""

from service.plans.store import Lookup, NoPlans, Plans, StoredPlan, open_plans

__all__ = ["Lookup", "NoPlans", "Plans", "StoredPlan", "open_plans"]
